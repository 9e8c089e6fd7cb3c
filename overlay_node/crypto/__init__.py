"""Pure cryptography: identity keys (``keys``) and BRC-42/43 derivation with BRC-3 signatures and HMACs (``brc42``)."""
