#!/usr/bin/env bash
# Make sure the PostgreSQL and Redis the tests talk to are running; start them if installed.
# A missing service is an error (the suite never skips its real parts), with CI=true or not.
set -u
PGHOST=${PGHOST:-127.0.0.1}
failed=0

pg_up() { pg_isready -q -h "$PGHOST" -p 5432 2>/dev/null; }
if ! pg_up; then
  if command -v pg_ctlcluster >/dev/null && [ -d /etc/postgresql ]; then
    for version in /etc/postgresql/*; do
      pg_ctlcluster --skip-systemctl-redirect "$(basename "$version")" main start || true
    done
    for _ in $(seq 50); do pg_up && break; sleep 0.2; done
  fi
fi
if pg_up; then echo "PostgreSQL: up"; else echo "PostgreSQL is not running on $PGHOST:5432 and could not be started" >&2; failed=1; fi

redis_up() { redis-cli -h 127.0.0.1 -p 6379 ping 2>/dev/null | grep -q PONG; }
if ! redis_up; then
  if command -v redis-server >/dev/null; then
    mkdir -p /tmp/chat-redis
    redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no \
      --dir /tmp/chat-redis --logfile /tmp/chat-redis/redis.log || true
    for _ in $(seq 50); do redis_up && break; sleep 0.2; done
  fi
fi
if redis_up; then echo "Redis: up"; else echo "Redis is not running on 127.0.0.1:6379 and could not be started" >&2; failed=1; fi

if [ "$failed" = 1 ] && [ "${CI:-}" = "true" ]; then
  echo "CI=true: a missing service is a failure, not a skip." >&2
fi
exit $failed
