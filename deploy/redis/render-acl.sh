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
# connect), a password is shorter than 16 characters or holds characters a
# URL would need encoded, or the template has a line that is not a user.
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
cr=$(printf '\r')
while IFS= read -r line || [ -n "$line" ]; do
  # A template saved with CRLF line ends renders the same.
  line=${line%"$cr"}
  case "$line" in
    '' | '#'*) continue ;;
    user\ *) ;;
    *)
      if [ -z "$(printf '%s' "$line" | tr -d ' \t')" ]; then
        continue
      fi
      echo "render-acl.sh: $template: not a user line: $line" >&2
      exit 2
      ;;
  esac
  name=$(printf '%s\n' "$line" | awk '{ print $2 }')
  if [ "$name" = default ]; then
    # A password no one knows: 32 random bytes, hashed, never kept. Full
    # rights, so that Redis 7.0/7.2 can replay the AOF (see users.acl).
    hash=$(head -c 32 /dev/urandom | sha256sum | cut -d ' ' -f 1)
    printf '%s on #%s ~* &* +@all\n' "$line" "$hash" >> "$tmp"
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
  # Every client puts the password in a URL (redis://user:password@host):
  # only characters a URL carries as they are.
  case "$password" in
    *[!A-Za-z0-9._~-]*)
      echo "render-acl.sh: $var holds characters a Redis URL would need encoded; use letters, digits and . _ ~ - (openssl rand -hex 32)" >&2
      exit 2
      ;;
  esac
  hash=$(printf '%s' "$password" | sha256sum | cut -d ' ' -f 1)
  printf '%s on #%s\n' "$line" "$hash" >> "$tmp"
done < "$template"
mv "$tmp" "$output"
trap - EXIT
