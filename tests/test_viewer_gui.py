"""Scipion's windows with the plugin in them, on a virtual screen (Xvfb): what a user sees.

* The project window (pyworkflow's ProjectWindow on the test project): the
  protocol tree lists "movie gain" under Movies, the run's summary shows the
  conclusion and its Methods the written-out citation; then the protocol's form
  opens with its parameters in a microscopist's words.
* The viewer: its own ``visualize`` opens pyworkflow's form (FormWindow) and
  enters the Tk main loop; a callback scheduled in that loop asks for every
  plot and the movie list the way the form's buttons do (``_visualizeParam``),
  checks that each opens a mapped window whose canvas holds a drawn, non-blank
  figure (or a table with every movie), and closes the form.

Every window is photographed from the virtual screen (Pillow's X11 grab) into
the test's temporary folder (``screenshots/``; set SCIPION_GAIN_SCREENSHOTS to
keep them elsewhere, e.g. as CI artifacts); a screenshot of one flat colour
fails the test. Skipped, with the reason, where Xvfb is not installed
(Debian/Ubuntu: ``apt-get install -y xvfb``).
"""
import os
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from report_helpers import shared_protocol_run

XVFB = shutil.which('Xvfb')
DISPLAYS = ('displayMovieGain', 'displaySpectrum', 'displayAccumulated', 'displayHistograms',
            'displayTimeline', 'displayDefects')

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


@pytest.fixture
def screenshots(tmp_path):
    folder = os.environ.get('SCIPION_GAIN_SCREENSHOTS')
    folder = Path(folder) if folder else tmp_path / 'screenshots'
    folder.mkdir(parents=True, exist_ok=True)
    print(f"screenshots: {folder}")
    return folder


def grab(display, window, path):
    """Photograph a Tk window's area of the virtual screen; fail on a blank picture."""
    from PIL import ImageGrab
    window.lift()  # above the windows opened since: the grab takes what is on the screen
    window.update()
    x, y = window.winfo_rootx(), window.winfo_rooty()
    width, height = window.winfo_width(), window.winfo_height()
    image = ImageGrab.grab(bbox=(x, y, x + width, y + height), xdisplay=display)
    image.save(path)
    pixels = np.asarray(image.convert('RGB'), dtype=float)
    assert pixels.var() > 10, f"{path.name}: the window is one flat colour"
    return pixels


def forget_tk_images():
    """After a Tk root is destroyed: pyworkflow caches its PhotoImages module-wide, and
    those die with the interpreter that made them ('image "pyimage12" doesn't exist')."""
    import tkinter
    from pyworkflow.gui import gui as pwgui
    pwgui.image_cache.clear()
    tkinter._default_root = None


def pump(root, seconds):
    """Let Tk draw for a while without entering its main loop."""
    end = time.time() + seconds
    while time.time() < end:
        root.update()
        time.sleep(0.05)


def widget_texts(widget):
    """Every 'text' option and combobox value in a widget tree."""
    out = []
    try:
        out.append(str(widget.cget('text')))
    except Exception:
        pass
    try:
        out.extend(str(v) for v in widget.cget('values'))
    except Exception:
        pass
    for child in widget.winfo_children():
        out.extend(widget_texts(child))
    return out


def tree_texts(tree, item=''):
    """{item text: [child texts]} of a ttk.Treeview, recursively."""
    out = {}
    for child in tree.get_children(item):
        text = tree.item(child, 'text')
        out[text] = [tree.item(c, 'text') for c in tree.get_children(child)]
        out.update(tree_texts(tree, child))
    return out


def test_the_project_window_shows_the_protocol_its_summary_and_form(virtual_display, monkeypatch,
                                                                     screenshots):
    import pyworkflow.gui.project  # noqa: F401  (before form.py: a circular import otherwise)
    from pyworkflow.gui.form import FormWindow
    from pyworkflow.gui.project import ProjectWindow
    from pyworkflow.protocol.params import LEVEL_ADVANCED
    from pyworkflow.utils import parseHyperText, HYPER_ITALIC, HYPER_BOLD

    project, prot, _ = shared_protocol_run()
    monkeypatch.chdir(project.getPath())
    monkeypatch.setenv('DISPLAY', virtual_display)
    window = ProjectWindow(project.getPath())
    form = None
    try:
        window.root.deiconify()
        window.root.geometry('1500x1000+0+0')
        pump(window.root, 3)
        view = window.viewWidget
        # the protocol tree, as the user browses it
        tree = tree_texts(view.protTree)
        assert 'scipion-gain - movie gain' in tree.get('Movies', []), tree.get('Movies')
        for item in view.protTree.get_children(''):
            for section in view.protTree.get_children(item):
                if view.protTree.item(section, 'text') == 'Movies':
                    view.protTree.item(section, open=True)
                    for entry in view.protTree.get_children(section):
                        if view.protTree.item(entry, 'text') == 'scipion-gain - movie gain':
                            view.protTree.selection_set(entry)
        # the finished run selected: its summary and methods
        run = window.project.getProtocol(prot.getObjId())
        view._selectItemProtocol(run)
        pump(window.root, 1)
        summary = view.summaryText.get('1.0', 'end')
        assert 'movies analysed' in summary and ('No problem found' in summary
                                                 or 'flagged' in summary)
        methods = view.methodText.get('1.0', 'end')
        # pyworkflow's header line, the run name in its italics: shown whole, no stray '_'
        assert '> scipion-gain - movie gain\n' in methods, methods[:200]
        assert 'References: Sorzano C.O.S. et al. (2018)' in methods
        assert 'Sorzano2018' not in methods
        for line in run._methods() + run._summary():  # nothing Scipion would turn to italics
            tags = []
            parseHyperText(line, lambda match, tag: tags.append(tag) or match.group())
            assert HYPER_ITALIC not in tags and HYPER_BOLD not in tags, line
        grab(virtual_display, window.root, screenshots / 'project_window.png')

        # the protocol's form, as "movie gain" in the tree opens it
        new = window.project.newProtocol(type(run))
        new.expertLevel.set(LEVEL_ADVANCED)
        form = FormWindow('Protocol Run: ' + new.getClassName(), new, lambda *a, **k: None,
                          window, updateProtocolCallback=None)
        form.root.deiconify()
        pump(form.root, 2)
        assert form.root.winfo_viewable() and form.root.winfo_width() > 300
        texts = widget_texts(form.root)
        for words in ('Check the gain reference the movies carry?',
                      'Analyse each movie in its own process?',  # an Advanced option, in a tab
                      'Orientation of the gain reference', 'Analyse one movie in every',
                      'Frames used per movie', 'Or use one frame in every'):
            assert any(words in text for text in texts), words
        orientations = [t for t in texts if 'RotGain' in t and 'FlipGain' in t]
        assert len(set(orientations)) >= 8, orientations
        grab(virtual_display, form.root, screenshots / 'protocol_form.png')
    finally:
        if form is not None:
            form.root.destroy()
        window.root.destroy()
        forget_tk_images()


def test_the_viewer_form_opens_every_plot_in_a_tk_window(virtual_display, monkeypatch,
                                                         screenshots):
    import pyworkflow.gui.project  # noqa: F401  (as the Scipion GUI does: form.py alone is a circular import)
    from pyworkflow.gui.form import FormWindow
    from pyworkflow.plugin import Domain
    from pyworkflow.viewer import DESKTOP_TKINTER
    from scipion_gain.viewers import FigureView, GainMovieGainViewer, TableView

    project, prot, _ = shared_protocol_run()
    monkeypatch.chdir(project.getPath())
    monkeypatch.setenv('DISPLAY', virtual_display)

    shown, problems, checked = [], [], []
    original_show = FigureView.show

    def recording_show(view):
        original_show(view)
        shown.append(view)

    monkeypatch.setattr(FigureView, 'show', recording_show)
    original_table_show = TableView.show

    def recording_table_show(view):
        original_table_show(view)
        shown.append(view)

    monkeypatch.setattr(TableView, 'show', recording_table_show)
    # The viewer as the Scipion GUI finds it for this protocol.
    found = Domain.findViewers(prot, DESKTOP_TKINTER)
    assert found == [GainMovieGainViewer]
    viewer = found[0](project=project, protocol=prot)

    def drive():
        try:
            root = viewer.getTkRoot()
            assert root is not None and root.winfo_viewable(), 'the form is not on the screen'
            grab(virtual_display, root.winfo_toplevel(), screenshots / 'viewer_form.png')
            before = len(shown)
            viewer._visualizeParam('displayMovieList')
            root.update()
            assert len(shown) == before + 1, 'displayMovieList: no window opened'
            table = shown[-1]
            table.window.update()
            assert table.window.winfo_viewable()
            rows = [table.tree.item(i, 'values') for i in table.tree.get_children()]
            assert [int(r[0]) for r in rows] == [1, 2, 3, 4]
            assert table.label.cget('text') == table.sentence
            grab(virtual_display, table.window, screenshots / 'viewer_movie_list.png')
            checked.append(('displayMovieList', table.window.title()))
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
                grab(virtual_display, window, screenshots / f"viewer_{name[len('display'):]}.png")
                checked.append((name, window.title()))
            # a movie chosen in the list: its reasons written out in full under the table,
            # and on a double click the form's Movie (id) field names the movie drawn
            table.tree.selection_set('3')
            table.window.update()
            reasons = dict((int(r[0]), r[4]) for r in rows)[3]
            assert reasons and table.details.cget('text').endswith(reasons)
            before = len(shown)
            x, y, _, _ = table.tree.bbox('3')
            for _ in range(2):  # a double click on the row, as the mouse makes it
                table.tree.event_generate('<ButtonPress-1>', x=x + 5, y=y + 3)
                table.tree.event_generate('<ButtonRelease-1>', x=x + 5, y=y + 3)
            table.window.update()
            assert len(shown) == before + 1, 'a double click opened no map'
            assert shown[-1].window.title().startswith('Residual gain of movie 3 ')
            assert str(viewer.formWindow.widgetDict['movieId'].get()) == '3'
            grab(virtual_display, table.window, screenshots / 'viewer_movie_list_chosen.png')
            grab(virtual_display, root.winfo_toplevel(), screenshots / 'viewer_form_chosen.png')
            viewer._visualizeParam('displaySpectrum')   # the form's button, after the choice
            root.update()
            assert shown[-1].window.title().startswith('Power spectrum of movie 3 ')
            checked.append(('chosen movie', shown[-1].window.title()))
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
        for view in shown:
            view.window.destroy()
        form_root = viewer.getTkRoot()
        hidden_root = form_root.master if form_root is not None else None
        if form_root is not None:
            form_root.destroy()
        if hidden_root is not None:
            hidden_root.destroy()  # pyworkflow's invisible tk.Tk() behind the form
        forget_tk_images()

    assert not problems, problems[0]
    assert [name for name, _ in checked] == ['displayMovieList'] + list(DISPLAYS) + ['chosen movie']
    titles = dict(checked)
    assert titles['displayTimeline'] == 'Verdict and statistics per movie'
    assert titles['displayMovieGain'] == 'Residual gain of movie 4 (movie_003.mrc)'
    assert titles['displayMovieList'].startswith('Analysed movies: 4')
    assert len(list(screenshots.glob('viewer_*.png'))) == 4 + len(DISPLAYS)
