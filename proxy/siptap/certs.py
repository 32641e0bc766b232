"""TEMPORARY, drop this commit at merge: the names probe.py and demo.py still import from here.

certs.py was split into siptap.tls.pem (loading) and siptap.tools.pki (the lab PKI). probe.py
and demo.py are being moved into siptap.tools by another branch, so their import lines are left
alone here; without this file every `siptap` command fails, because building the CLI parser
imports probe. Nothing else imports this module.
"""

from siptap.tls.pem import key_matches_certificate as key_matches_certificate
from siptap.tls.pem import load_certificate_chain as load_certificate_chain
from siptap.tls.pem import load_private_key as load_private_key
from siptap.tools.pki import init_lab_pki as init_lab_pki
