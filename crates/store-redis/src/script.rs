//! The server-side Lua scripts, and how they are called: `EVALSHA`, then `EVAL` if the server
//! does not have the script cached (`NOSCRIPT`: after a restart, a failover, `SCRIPT FLUSH`).
//! `EVAL` caches it again. A `NOSCRIPT` reply means the script did not run, so falling back is
//! safe for the append too.

use redis::{Cmd, ErrorKind, ServerErrorKind, Value};

use crate::connection::Connection;
use crate::error::CallError;

/// Appends a batch to one aggregate, atomically, after checking its expected sequence.
///
/// Scripts run alone on the server (nothing interleaves), and this one writes nothing until
/// every check has passed (the sequence, and the type of every key it writes), so a batch is
/// stored whole or not at all; the first write is the one a server out of memory refuses (a
/// script that has written may go on; one that has not gets `OOM`), so running out of memory
/// cannot cut a batch either.
///
/// - `KEYS[1]` events, `KEYS[2]` requests, `KEYS[3]` correlations of the aggregate; on a
///   single server also `KEYS[4]` the domains, `KEYS[5]` the domain's roots, `KEYS[6..]` the
///   correlation sets of the batch's ids, written in the same step. (In a cluster those live in
///   other slots; the caller writes them before running the script.)
/// - `ARGV[1]` the expected sequence (decimal, below 2^53), `ARGV[2]` the number of events `n`,
///   `ARGV[3 .. 2+2n]` score and member of each event, `ARGV[3+2n]` the request member (empty
///   for none), `ARGV[4+2n]` the number `k` of correlation members, then those `k` members;
///   with index keys, then the domain, the root and the aggregate's correlation-set member.
///
/// Returns `{1, new next sequence}`, `{0, actual next sequence}` on a conflict, or
/// `{-1, error}` when a command before the first write failed (`redis.pcall`: a key of the
/// wrong type; `OOM`, `READONLY`, `MISCONF`, `NOREPLICAS` at the first write), having written
/// nothing. An append re-sent after a lost connection (the cluster client does that) that finds
/// its own first event, token included, already stored was applied by its first copy: it
/// answers success. So a conflict or a refusal also says that no earlier copy of the append
/// was applied: one that was would have left the stream past the expected sequence, its first
/// event there, and the events key a sorted set. (An error reply, by contrast, may be a later
/// copy's, refused before the script ran: in a cluster it says nothing of the first copy.)
pub(crate) const APPEND: &str = r#"
local expected = tonumber(ARGV[1])
local n = tonumber(ARGV[2])
local actual = redis.pcall('ZCARD', KEYS[1])
if type(actual) == 'table' then
  return {-1, actual.err}
end
if actual ~= expected then
  if actual >= expected + n then
    local first = redis.call('ZRANGEBYSCORE', KEYS[1], ARGV[1], ARGV[1])
    if first[1] == ARGV[4] then
      return {1, expected + n}
    end
  end
  return {0, actual}
end
-- A script's writes are not undone if it fails: a key of the wrong type must stop it here,
-- before its first write.
local checks = {{'ZCARD', KEYS[2]}, {'ZCARD', KEYS[3]}}
if #KEYS > 3 then
  checks[#checks + 1] = {'ZCARD', KEYS[4]}
  checks[#checks + 1] = {'ZCARD', KEYS[5]}
  for j = 6, #KEYS do
    checks[#checks + 1] = {'SCARD', KEYS[j]}
  end
end
for _, check in ipairs(checks) do
  local reply = redis.pcall(check[1], check[2])
  if type(reply) == 'table' then
    return {-1, reply.err}
  end
end
local last = 2 + 2 * n
-- unpack() is bounded by Lua's C stack: add the events 512 at a time. The first write is the
-- one a server out of memory, a replica or a server failing to persist refuses.
local added = redis.pcall('ZADD', KEYS[1], unpack(ARGV, 3, math.min(1026, last)))
if type(added) == 'table' then
  return {-1, added.err}
end
for i = 1027, last, 1024 do
  redis.call('ZADD', KEYS[1], unpack(ARGV, i, math.min(i + 1023, last)))
end
local at = last + 1
if ARGV[at] ~= '' then
  redis.call('ZADD', KEYS[2], 0, ARGV[at])
end
local k = tonumber(ARGV[at + 1])
for j = at + 2, at + 1 + k do
  redis.call('ZADD', KEYS[3], 0, ARGV[j])
end
if #KEYS > 3 then
  local index = at + 2 + k
  if expected == 0 then
    redis.call('ZADD', KEYS[4], 0, ARGV[index])
    redis.call('ZADD', KEYS[5], 0, ARGV[index + 1])
  end
  for j = 6, #KEYS do
    redis.call('SADD', KEYS[j], ARGV[index + 2])
  end
end
return {1, expected + n}
"#;

/// Finds the events of one request or correlation id of one aggregate, in one consistent
/// read: the id's index members, then the events of each member's range.
///
/// - `KEYS[1]` the index (requests or correlations), `KEYS[2]` the events.
/// - `ARGV[1]`, `ARGV[2]` the `ZRANGEBYLEX` bounds of the id's members, `ARGV[3]` how many
///   bytes of a member follow the id (its range is their first 16).
///
/// Returns `{members, pages}`, members ascending by range, pages ascending by sequence.
pub(crate) const LOOKUP: &str = r#"
local members = redis.call('ZRANGEBYLEX', KEYS[1], ARGV[1], ARGV[2])
local tail = tonumber(ARGV[3])
local pages = {}
for _, member in ipairs(members) do
  local at = #member - tail
  local from, to = 0, 0
  for i = 1, 8 do
    from = from * 256 + string.byte(member, at + i)
    to = to * 256 + string.byte(member, at + 8 + i)
  end
  local range = redis.call('ZRANGEBYSCORE', KEYS[2], from, to - 1)
  for _, page in ipairs(range) do
    pages[#pages + 1] = page
  end
end
return {members, pages}
"#;

/// A script and its SHA-1, computed once.
pub(crate) struct Script {
    code: &'static str,
    hash: String,
}

impl Script {
    pub(crate) fn new(code: &'static str) -> Self {
        Self {
            code,
            hash: redis::Script::new(code).get_hash().to_owned(),
        }
    }

    /// Runs the script with `keys` and `args` (the first key routes it in a cluster).
    pub(crate) async fn run(
        &self,
        connection: &Connection,
        keys: &[&str],
        args: &[&[u8]],
    ) -> Result<Value, CallError> {
        let cmd = |head: &str, body: &str| {
            let mut cmd = Cmd::with_capacity(
                3 + keys.len() + args.len(),
                body.len() + args.iter().map(|arg| arg.len() + 16).sum::<usize>(),
            );
            cmd.arg(head).arg(body).arg(keys.len()).arg(keys);
            for arg in args {
                cmd.arg(*arg);
            }
            cmd
        };
        match connection.send(&cmd("EVALSHA", &self.hash)).await {
            Err(CallError::Sent(error))
                if error.kind() == ErrorKind::Server(ServerErrorKind::NoScript) =>
            {
                connection.send(&cmd("EVAL", self.code)).await
            }
            other => other,
        }
    }
}
