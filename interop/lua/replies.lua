-- miltertest script: a reject at CONNECT, and a tempfail with a custom reply at end of message.
-- miltertest keeps error() text to itself: say what failed on stderr, then exit non-zero.
local function fail(msg) io.stderr:write(msg, "\n"); os.exit(1) end
local conn = mt.connect(socket, 50, 0.1)
if conn == nil then fail("mt.connect() failed") end
if mt.conninfo(conn, "bad.example", "192.0.2.9") ~= nil then fail("mt.conninfo() failed") end
if mt.getreply(conn) ~= SMFIR_REJECT then fail("connect from bad.example: not rejected") end
mt.disconnect(conn)

conn = mt.connect(socket, 50, 0.1)
if conn == nil then fail("mt.connect() failed") end
if mt.conninfo(conn, "client.example", "192.0.2.1") ~= nil then fail("mt.conninfo() failed") end
if mt.getreply(conn) ~= SMFIR_CONTINUE then fail("connect: not continue") end
if mt.mailfrom(conn, "<alice@example.org>") ~= nil then fail("mt.mailfrom() failed") end
if mt.getreply(conn) ~= SMFIR_CONTINUE then fail("mail: not continue") end
if mt.rcptto(conn, "<bob@example.net>") ~= nil then fail("mt.rcptto() failed") end
if mt.getreply(conn) ~= SMFIR_CONTINUE then fail("rcpt: not continue") end
if mt.header(conn, "Subject", "please tempfail") ~= nil then fail("mt.header() failed") end
if mt.getreply(conn) ~= SMFIR_CONTINUE then fail("header: not continue") end
if mt.eom(conn) ~= nil then fail("mt.eom() failed") end
if mt.getreply(conn) ~= SMFIR_REPLYCODE then fail("eom: not a custom reply") end
if not mt.eom_check(conn, MT_SMTPREPLY, "451", "4.7.1", "try later") then fail("eom: wrong reply") end
mt.disconnect(conn)
