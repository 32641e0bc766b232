"""siptap: an inline, TLS-terminating SIP proxy that mirrors cleartext SIP and key material."""

__version__ = "0.1.0"
