"""The relay: one exchange per proxied request — attempts upstream, then bytes back.

``context`` declares what the relay needs from the rest of the gateway (a frozen
``RelayConfig`` built at config load, and ``RelayHooks`` for observation);
``attempts`` runs the upload and the attempt chain; ``exchange`` relays the
accepted response and ends by handing one ``RequestRecord`` to the hooks.
"""
