"""The Twisted HTTP ceiling for workload (c): a Klein handler that reads the body and answers a constant.

Form parsing is off, as in psd, so the ceiling is the best bare Twisted
does, not what its defaults cost.  Run: ``python bench/bare_klein.py PORT``.
"""

import sys

from klein import Klein
from twisted.internet import reactor
from twisted.web.server import Site


class Bare:
    app = Klein()

    @app.route("/v1/points", methods=["POST"])
    def write_points(self, request):
        request.content.read()
        request.setHeader(b"Content-Type", b"application/json")
        return b'{"written":1,"duplicates":0}'


if __name__ == "__main__":
    reactor.listenTCP(int(sys.argv[1]), Site(Bare().app.resource(), parsePOSTFormSubmission=False), interface="127.0.0.1")
    reactor.run()
