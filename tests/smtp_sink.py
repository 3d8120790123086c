"""A local SMTP server that keeps what it receives (a test double for a facility's mail server).

Written here because the standard library's ``smtpd`` is deprecated (gone in
Python 3.12) and a package (aiosmtpd) for a dozen lines of protocol is not
worth a dependency. It answers what ``smtplib.SMTP.sendmail`` sends (EHLO or
HELO, MAIL, RCPT, DATA, QUIT) and keeps each message's text.
"""
import socketserver
import threading
from email import message_from_string


class _Session(socketserver.StreamRequestHandler):
    def _reply(self, text):
        self.wfile.write((text + '\r\n').encode())

    def handle(self):
        self._reply('220 sink')
        data, lines = False, []
        for raw in self.rfile:
            line = raw.decode('utf-8', 'replace').rstrip('\r\n')
            if data:
                if line == '.':
                    self.server.messages.append(message_from_string('\n'.join(lines)))
                    data, lines = False, []
                    self._reply('250 OK')
                else:
                    lines.append(line[1:] if line.startswith('..') else line)
                continue
            command = line[:4].upper()
            if command == 'DATA':
                data = True
                self._reply('354 end with .')
            elif command == 'QUIT':
                self._reply('221 bye')
                return
            else:
                self._reply('250 OK')


class SmtpSink(socketserver.ThreadingTCPServer):
    """``with SmtpSink() as sink``: ``sink.address`` ('127.0.0.1:PORT', as
    smtplib takes it) and ``sink.messages`` (email.message.Message objects)."""
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self):
        super().__init__(('127.0.0.1', 0), _Session)
        self.messages = []
        self.address = '127.0.0.1:%d' % self.server_address[1]
        self._thread = threading.Thread(target=self.serve_forever, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self.shutdown()
        self.server_close()
