"""Lab peers for the demo and the tests: a core SBC stand-in and a customer E-SBC stand-in.

They use the standard library's ssl (a different TLS stack from siptap's pyOpenSSL), so a
bug in siptap's TLS code cannot hide behind the same bug on the other end.
"""
