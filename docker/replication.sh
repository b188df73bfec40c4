#!/usr/bin/env bash
# Runs once when the primary's data directory is first made: lets the "scale" profile's
# streaming replica (pg_basebackup, then WAL streaming) connect with the same password.
set -euo pipefail
echo "host replication ${POSTGRES_USER} all scram-sha-256" >> "${PGDATA}/pg_hba.conf"
