"""Postgres for the service: the connection pools and migrations at start (``pool``), embedded
Postgres and its standby (``embedded``), and the read replicas a read may go to (``replicas``)."""
