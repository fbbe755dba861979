"""Taking part in a SPEAR cluster: the node's link to SPEAR's metadata server (SMS).

`sms.proto` holds the calls a node makes to the SMS (upstream's `sms` package, the subset a node
uses). Everything here sits above the engine: the engine sees only its TaskSource interface and the
lifecycle and pool listeners every observer uses.
"""
