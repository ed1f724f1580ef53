"""``aigi serve``: the HTTP API and the web page (:mod:`aigi.serve.app`), with a micro-batcher in front of each model
(:mod:`aigi.serve.batcher`). Needs the ``serve`` extra: ``pip install 'aigi[serve]'``."""
