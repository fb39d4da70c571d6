-- miltertest script: negotiation options. The milter needs six actions: an MTA that offers only
-- ADDHDRS is refused (the milter closes without a reply); an MTA that offers everything, with
-- every protocol step, is served.
-- miltertest keeps error() text to itself: say what failed on stderr, then exit non-zero.
local function fail(msg) io.stderr:write(msg, "\n"); os.exit(1) end
local conn = mt.connect(socket, 50, 0.1)
if conn == nil then fail("mt.connect() failed") end
-- Debian's miltertest 2.11 sends its third argument as the protocol steps and its fourth as the
-- actions (its manual page says the other way round): seen on the wire by the trace example.
if mt.negotiate(conn, 6, nil, SMFIF_ADDHDRS) == nil then
  fail("negotiation with too few actions succeeded")
end
mt.disconnect(conn)

conn = mt.connect(socket, 50, 0.1)
if conn == nil then fail("mt.connect() failed") end
if mt.negotiate(conn, 6, nil, nil) ~= nil then fail("negotiation with every action failed") end
if mt.conninfo(conn, "client.example", "192.0.2.1") ~= nil then fail("mt.conninfo() failed") end
if mt.getreply(conn) ~= SMFIR_CONTINUE then fail("connect after negotiation: not continue") end
mt.disconnect(conn)
