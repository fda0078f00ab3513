-- Renews the TTL of a batch's versions where they are: the record key while
-- it holds the version, else the key ingest moved it to when a newer one
-- came; never a newer version in its place (see `extend_ttl` in upload_queue.rs).
-- Never shortens one (GT). allow-oom: the uploader must work when Redis is
-- full.
--
-- ARGV: 1 ttl seconds, 2 superseded prefix, then per version: key, id, sha1

for i = 3, #ARGV, 3 do
  local key, id, digest = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  local value = redis.call('GET', key)
  if not (value and redis.sha1hex(value) == digest) then
    key = ARGV[2] .. digest .. ':' .. id
  end
  redis.call('EXPIRE', key, ARGV[1], 'GT')
end
