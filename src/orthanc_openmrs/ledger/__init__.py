"""Where the ledger lives and how it is reached: a SQLite file (sqlite.py) or a PostgreSQL
database (postgres.py), each behind the same small connection interface (backend.py). The
ledger's queries are written once, in store.py; what the two dialects spell differently is in
dialect.py, and each backend's schema (DDL and migrations) in its own module.
"""
