"""The transaction layer: reading raw, Extended Format and BEEF (V1, V2, Atomic) transactions, checking them
(structure, scripts, amounts, fee policy) and their merkle paths against a chain's block roots (SPV), and writing
BEEF. Pure and synchronous: no sockets, no database, no trio; callers fetch block roots and held transactions
first and pass them in.

Used by the wallet and the payee (``services/``), the overlay engine and the devnet ledger alike. Modules:
``blocks`` (txids, merkle trees, headers, standard scripts), ``formats`` (parsing and writing), ``refusals`` (ARC's
error vocabulary, the one error type of this layer), ``validation`` (one transaction's full check and the fee
policy), ``spv`` (a whole BEEF checked against block roots).
"""
