"""Pure cryptography: identity keys (``keys``), BRC-42/43 derivation with BRC-3 signatures and HMACs (``brc42``),
BRC-29 payment keys (``brc29``), scripts (``scripts``, ``pushdrop``), merkle paths (``bump``) and signing
transactions (``sighash``)."""
