"""CNS gateway: dispatcher and gateway ports speaking CNS-W1 (see docs/cns-wire.md).

The sans-IO codec (:mod:`.codec`) and message parsers (:mod:`.messages`) need nothing else of the package; the
ports (:mod:`.ports`), sessions and the worker mailbox are the gevent adapters around them.
"""
