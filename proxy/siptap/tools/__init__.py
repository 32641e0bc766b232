"""The tools wing: what a person runs beside the proxy (probe, export, demo, lab peers, lab PKI). The product core never imports it."""
