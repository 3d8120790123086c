"""The movie-gain viewer in a real Tk window, on a virtual screen (Xvfb).

The viewer's own ``visualize`` opens pyworkflow's form (FormWindow) and enters
the Tk main loop; a callback scheduled in that loop asks for every plot the
way the form's buttons do (``_visualizeParam``), checks that each opens a
mapped window whose canvas holds a drawn, non-blank figure, and closes the
form. Skipped, with the reason, where Xvfb is not installed
(Debian/Ubuntu: ``apt-get install -y xvfb``).
"""
import os
import shutil
import subprocess
import time

import numpy as np
import pytest

from report_helpers import shared_protocol_run

XVFB = shutil.which('Xvfb')
DISPLAYS = ('displayMovieGain', 'displayAccumulated', 'displayHistograms', 'displayTimeline',
            'displayDefects')

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(XVFB is None, reason='Xvfb is not installed (apt-get install -y xvfb): '
                                            'the viewer GUI test needs a virtual X screen'),
]


@pytest.fixture(scope='module')
def virtual_display():
    """Start Xvfb on a free display number (it writes the number to a pipe when ready)."""
    read_end, write_end = os.pipe()
    proc = subprocess.Popen([XVFB, '-displayfd', str(write_end), '-screen', '0', '1600x1200x24',
                             '-nolisten', 'tcp'], pass_fds=(write_end,),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    os.close(write_end)
    number = b''
    deadline = time.time() + 30
    while not number.endswith(b'\n') and time.time() < deadline and proc.poll() is None:
        chunk = os.read(read_end, 16)
        if not chunk:
            break
        number += chunk
    os.close(read_end)
    if not number.strip().isdigit():
        proc.kill()
        proc.wait()
        pytest.skip('Xvfb is installed but did not start a display')
    try:
        yield ':' + number.decode().strip()
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_the_viewer_form_opens_every_plot_in_a_tk_window(virtual_display, monkeypatch):
    import pyworkflow.gui.project  # noqa: F401  (as the Scipion GUI does: form.py alone is a circular import)
    from pyworkflow.gui.form import FormWindow
    from pyworkflow.plugin import Domain
    from pyworkflow.viewer import DESKTOP_TKINTER
    from scipion_gain.viewers import FigureView, GainMovieGainViewer

    project, prot, _ = shared_protocol_run()
    monkeypatch.chdir(project.getPath())
    monkeypatch.setenv('DISPLAY', virtual_display)

    shown, problems, checked = [], [], []
    original_show = FigureView.show

    def recording_show(view):
        original_show(view)
        shown.append(view)

    monkeypatch.setattr(FigureView, 'show', recording_show)
    # The viewer as the Scipion GUI finds it for this protocol.
    found = Domain.findViewers(prot, DESKTOP_TKINTER)
    assert found == [GainMovieGainViewer]
    viewer = found[0](project=project, protocol=prot)

    def drive():
        try:
            root = viewer.getTkRoot()
            assert root is not None and root.winfo_viewable(), 'the form is not on the screen'
            for name in DISPLAYS:
                before = len(shown)
                viewer._visualizeParam(name)     # what the form's "eye" button calls
                root.update()
                assert len(shown) == before + 1, f"{name}: no window opened"
                view = shown[-1]
                window = view.window
                window.update()
                assert window.winfo_exists() and window.winfo_viewable(), f"{name}: not mapped"
                assert window.winfo_width() > 200 and window.winfo_height() > 200, name
                assert str(window.master) == str(root), f"{name}: not attached to the form"
                pixels = np.asarray(view.canvas.get_renderer().buffer_rgba())[..., :3]
                assert pixels.var() > 10, f"{name}: the canvas is blank"
                checked.append((name, window.title()))
        except Exception as exc:  # an exception in a Tk callback would be swallowed
            problems.append(exc)
        finally:
            viewer.getTkRoot().quit()  # leave the main loop (closing the form would sys.exit)

    original_form_show = FormWindow.show

    def form_show(form, *args, **kwargs):
        form.root.after(500, drive)
        form.root.after(120000, form.root.quit)  # never hang the test run
        return original_form_show(form, *args, **kwargs)

    monkeypatch.setattr(FormWindow, 'show', form_show)
    try:
        viewer.visualize(prot)   # returns when drive() leaves the main loop
    finally:
        import tkinter
        for view in shown:
            view.window.destroy()
        form_root = viewer.getTkRoot()
        hidden_root = form_root.master if form_root is not None else None
        if form_root is not None:
            form_root.destroy()
        if hidden_root is not None:
            hidden_root.destroy()  # pyworkflow's invisible tk.Tk() behind the form
        tkinter._default_root = None

    assert not problems, problems[0]
    assert [name for name, _ in checked] == list(DISPLAYS)
    titles = dict(checked)
    assert titles['displayTimeline'] == 'Statistics per movie'
    assert 'movie 0' in titles['displayMovieGain']
