-- miltertest script: the decisions of every stage and every end-of-message action of the
-- milterkit milter in interop/tests/miltertest.rs. Run: miltertest -D socket=SPEC -s decisions.lua
-- miltertest keeps error() text to itself: say what failed on stderr, then exit non-zero.
local function fail(msg) io.stderr:write(msg, "\n"); os.exit(1) end
local conn = mt.connect(socket, 50, 0.1)
if conn == nil then fail("mt.connect() failed") end
local function expect(what, want)
  local got = mt.getreply(conn)
  if got ~= want then fail(what .. ": reply " .. tostring(got) .. ", want " .. tostring(want)) end
end
if mt.conninfo(conn, "client.example", "192.0.2.1") ~= nil then fail("mt.conninfo() failed") end
expect("connect", SMFIR_CONTINUE)
if mt.helo(conn, "client.example") ~= nil then fail("mt.helo() failed") end
expect("helo", SMFIR_CONTINUE)
mt.macro(conn, SMFIC_MAIL, "i", "LUA123")
if mt.mailfrom(conn, "<alice@example.org>", "SIZE=100") ~= nil then fail("mt.mailfrom() failed") end
expect("mail", SMFIR_CONTINUE)
if mt.rcptto(conn, "<reject@example.net>") ~= nil then fail("mt.rcptto() failed") end
expect("rcpt reject", SMFIR_REPLYCODE)
if mt.rcptto(conn, "<bob@example.net>") ~= nil then fail("mt.rcptto() failed") end
expect("rcpt", SMFIR_CONTINUE)
if mt.data(conn) ~= nil then fail("mt.data() failed") end
expect("data", SMFIR_CONTINUE)
if mt.header(conn, "Subject", "hello") ~= nil then fail("mt.header() failed") end
expect("header", SMFIR_CONTINUE)
if mt.header(conn, "X-Remove", "me") ~= nil then fail("mt.header() failed") end
expect("header", SMFIR_CONTINUE)
if mt.eoh(conn) ~= nil then fail("mt.eoh() failed") end
expect("eoh", SMFIR_CONTINUE)
if mt.bodystring(conn, "old body\r\n") ~= nil then fail("mt.bodystring() failed") end
expect("body", SMFIR_CONTINUE)
if mt.eom(conn) ~= nil then fail("mt.eom() failed") end
expect("eom", SMFIR_CONTINUE)
local checks = {
  {MT_HDRADD, "X-Lua", "added"},
  {MT_HDRINSERT, "X-Lua-Top", "top"},
  {MT_HDRCHANGE, "Subject", "[lua] changed"},
  {MT_HDRDELETE, "X-Remove"},
  {MT_RCPTADD, "<added@example.net>"},
  {MT_RCPTDELETE, "<removed@example.net>"},
  {MT_BODYCHANGE, "new body\r\n"},
  {MT_QUARANTINE, "lua quarantine"},
}
-- Exactly as many arguments as each check has: an explicit nil counts as one to miltertest.
local unpack_ = table.unpack or unpack
for i, c in ipairs(checks) do
  if not mt.eom_check(conn, unpack_(c)) then fail("eom check " .. i .. " failed: " .. c[2]) end
end
mt.disconnect(conn)
