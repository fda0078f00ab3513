#!/bin/sh
# Renders deploy/redis/users.acl (rules, no passwords) into the ACL file
# Redis loads: each `user NAME ...` line gets `on #<sha256 of the password>`
# when REDIS_<ROLE>_PASSWORD is set (flit-service -> REDIS_SERVICE_PASSWORD),
# `off` when it is not. Only hashes are written, the file is 0600, and no
# password is ever printed.
#
#   render-acl.sh TEMPLATE OUTPUT
#
# Exits 2 when REDIS_SERVICE_PASSWORD is missing (flit-cache could not
# connect) or a password is shorter than 16 characters.
set -eu

if [ "$#" -ne 2 ]; then
  echo "usage: $0 TEMPLATE OUTPUT" >&2
  exit 2
fi
template=$1
output=$2

if [ -z "${REDIS_SERVICE_PASSWORD:-}" ]; then
  echo "render-acl.sh: REDIS_SERVICE_PASSWORD is not set: flit-cache would have no user; refusing" >&2
  exit 2
fi

umask 077
tmp="$output.tmp.$$"
trap 'rm -f "$tmp"' EXIT
: > "$tmp"
while IFS= read -r line || [ -n "$line" ]; do
  case "$line" in
    '' | '#'*) continue ;;
  esac
  name=$(printf '%s\n' "$line" | awk '{ print $2 }')
  if [ "$name" = default ]; then
    printf '%s\n' "$line" >> "$tmp"
    continue
  fi
  role=$(printf '%s' "${name#flit-}" | tr 'a-z-' 'A-Z_')
  var="REDIS_${role}_PASSWORD"
  password=$(printenv "$var" || true)
  if [ -z "$password" ]; then
    echo "render-acl.sh: $name stays off ($var is not set)" >&2
    printf '%s off\n' "$line" >> "$tmp"
    continue
  fi
  if [ "${#password}" -lt 16 ]; then
    echo "render-acl.sh: $var is shorter than 16 characters; use openssl rand -hex 32" >&2
    exit 2
  fi
  hash=$(printf '%s' "$password" | sha256sum | cut -d ' ' -f 1)
  printf '%s on #%s\n' "$line" "$hash" >> "$tmp"
done < "$template"
mv "$tmp" "$output"
trap - EXIT
