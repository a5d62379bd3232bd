// A reference web app on session_ext: sign-in, a platform switch kept in session_data, a devices
// list, CSRF protection and live logout in every open tab (LISTEN/NOTIFY relayed over SSE).
//
//     DATABASE_URL=postgresql://authenticator@/app?host=/run/postgresql PORT=3000 npm start
//
// It connects as PostgREST's login role `authenticator` and runs every database call as PostgREST
// would: one transaction that sets the role and the JWT claims, then calls the functions.
import cookieParser from 'cookie-parser';
import express from 'express';
import { fileURLToPath } from 'node:url';
import pg from 'pg';
import { v5 as uuidv5, validate as isUuid } from 'uuid';
import { PLATFORMS, appPage, panel, signInPage } from './views.mjs';

const { DATABASE_URL, PORT = '3000', SESSION_IDLE_TIMEOUT } = process.env;
// User ids are UUIDv5 of the user name in this example's own namespace.
const USER_NAMESPACE = '4cef3846-a923-44b4-bc94-e7ae642f0c0c';
const MAX_ATTEMPTS = 10;
const TOKEN_COOKIE = 'session_token'; // the bearer secret
const ID_COOKIE = 'session_id'; // not secret: only to tell why a token stopped working

const pool = new pg.Pool({ connectionString: DATABASE_URL });
pool.on('error', (error) => console.error(`idle database connection lost: ${error.message}`));

async function transaction(role, claims, work) {
  const client = await pool.connect();
  let broken;
  try {
    await client.query('BEGIN');
    await client.query(
      "SELECT set_config('role', $1, true), set_config('request.jwt.claims', $2, true)",
      [role, JSON.stringify({ ...claims, role })],
    );
    const rows = await work(async (sql, params) => (await client.query(sql, params)).rows);
    await client.query('COMMIT');
    return rows;
  } catch (error) {
    await client.query('ROLLBACK').catch((e) => (broken = e));
    throw error;
  } finally {
    client.release(broken);
  }
}

// Roles: before the token is validated the server does not know the user, so only that lookup
// (and get_session, to tell why a token stopped working) runs as the admin `service_role`.
// Everything else runs as the user (`authenticated`, claim sub = user id), like a PostgREST
// request with the user's JWT, so the extension's ownership checks and RLS confine even a bug in
// this server to that user's own sessions.
const asAdmin = (work) => transaction('service_role', {}, work);
const asUser = (userId, work) => transaction('authenticated', { sub: userId }, work);

// The live session behind a token, or null.
async function validate(token) {
  if (!token) return null;
  try {
    const [session] = await asAdmin((q) => q('SELECT * FROM session_ext.validate_session($1)', [token]));
    return session.id ? session : null;
  } catch (error) {
    if (error.code === '22023') return null; // a malformed cookie
    throw error;
  }
}

// Why a session no longer validates. A session row that is gone was deleted by cleanup, which
// removes an expired session at once but a revoked one only after session_ext.revoked_retention.
async function endReason(sessionId) {
  if (!isUuid(sessionId)) return 'signed out';
  const [s] = await asAdmin((q) => q('SELECT revoked_at FROM session_ext.get_session($1)', [sessionId]));
  return s.revoked_at ? 'signed out' : 'session expired';
}

// HttpOnly: no page script can read the token; SameSite=Strict: no cross-site request sends it;
// Secure when served over HTTPS (behind a TLS proxy, set express's "trust proxy"). Clearing a
// cookie takes the attributes it was set with.
const cookieOptions = (req) => ({ httpOnly: true, sameSite: 'strict', path: '/', secure: req.secure });

async function requireSession(req, res, next) {
  req.session = await validate(req.cookies[TOKEN_COOKIE]);
  if (req.session) return next();
  res.status(401).type('text').send(await endReason(req.cookies[ID_COOKIE]));
}

// Every POST but sign-in (which has no session yet, hence no session-bound token) sends the
// session's CSRF token in the X-CSRF-Token header; without the right one nothing changes.
async function requireCsrfToken(req, res, next) {
  const [{ ok }] = await asUser(req.session.user_id, (q) =>
    q('SELECT session_ext.verify_csrf_token($1, $2) AS ok', [req.cookies[TOKEN_COOKIE], req.get('x-csrf-token') ?? null]),
  );
  if (ok) return next();
  res.status(403).type('text').send('forbidden: missing or wrong CSRF token');
}

const devicesOf = (session) =>
  asUser(session.user_id, (q) =>
    q('SELECT id, device_info, user_agent, ip_address, created_at, last_active_at FROM session_ext.list_user_sessions()'),
  );

const app = express();
app.disable('x-powered-by');
app.use((req, res, next) => {
  res.set({
    'Content-Security-Policy': "default-src 'self'; form-action 'self'; frame-ancestors 'none'",
    'Cache-Control': 'no-store',
  });
  next();
});
app.use(express.static(fileURLToPath(new URL('public', import.meta.url))));
app.use(cookieParser(), express.urlencoded({ extended: false }), express.json());

app.get('/', async (req, res) => {
  const token = req.cookies[TOKEN_COOKIE];
  const session = await validate(token);
  if (!session) {
    return res.send(signInPage(req.cookies[ID_COOKIE] ? await endReason(req.cookies[ID_COOKIE]) : ''));
  }
  const [{ csrf }] = await asUser(session.user_id, (q) =>
    q('SELECT session_ext.session_csrf_token($1) AS csrf', [token]),
  );
  res.send(appPage(session, await devicesOf(session), csrf));
});

app.get('/panel', requireSession, async (req, res) => {
  res.send(panel(req.session, await devicesOf(req.session)).text);
});

// Sign-in has no session yet, so it cannot carry a session's CSRF token. Against login CSRF (a
// page elsewhere signing this browser in as someone else) it takes only requests the browser
// says come from this origin: Sec-Fetch-Site, or else Origin. Authentication is out of scope:
// the user id is derived from the name; a real app checks a password here first.
app.post('/signin', async (req, res) => {
  const site = req.get('sec-fetch-site');
  const origin = req.get('origin');
  if (site ? site !== 'same-origin' : origin && origin !== `${req.protocol}://${req.get('host')}`) {
    return res.status(403).type('text').send('forbidden: sign-in from another origin');
  }
  const name = String(req.body?.name ?? '').trim();
  if (!name) return res.status(400).type('text').send('a user name is required');
  const userId = uuidv5(name, USER_NAMESPACE);
  // Signing in again ends the session this browser had, rather than leaving it behind unseen.
  const previous = await validate(req.cookies[TOKEN_COOKIE]);
  if (previous) {
    await asUser(previous.user_id, (q) => q("SELECT session_ext.revoke_session($1, 'logout')", [previous.id]));
  }
  const [session] = await asUser(userId, (q) =>
    q(
      `SELECT id, token, expires_at FROM session_ext.create_user_session(
         user_id => $1, session_data => $2::json, idle_timeout => $3::interval,
         device_info => $4, user_agent => $5, ip_address => $6)`,
      [
        userId,
        JSON.stringify({ user_name: name, platform: 'web', switches: 0 }),
        SESSION_IDLE_TIMEOUT ?? null,
        String(req.body.device ?? '').trim() || null,
        req.get('user-agent')?.slice(0, 1024) || null, // session_ext's limit for the column
        req.ip.replace(/^::ffff:(?=\d+\.)/, ''), // an IPv4 client of a dual-stack socket
      ],
    ),
  );
  const options = { ...cookieOptions(req), expires: session.expires_at };
  res.cookie(TOKEN_COOKIE, session.token, options).cookie(ID_COOKIE, session.id, options).redirect(303, '/');
});

// Read-modify-write with optimistic concurrency: the write names the version it read; a switch
// committed in between makes it fail with 40001, and then it reads again and redoes the change.
// So concurrent switches all count, and the last one decides the platform for every tab.
app.post('/platform', requireSession, requireCsrfToken, async (req, res) => {
  const { platform } = req.body ?? {};
  if (!PLATFORMS.includes(platform)) return res.status(400).type('text').send('unknown platform');
  let read = req.session; // validate_session returned the data and its version
  for (let attempt = 1; ; attempt++) {
    try {
      const [{ version }] = await asUser(read.user_id, (q) =>
        q(
          `SELECT session_ext.update_session_data(
             session_id => $1, session_data => $2::jsonb, expected_version => $3) AS version`,
          [read.id, JSON.stringify({ platform, switches: (read.session_data.switches ?? 0) + 1 }), read.data_version],
        ),
      );
      // NULL: the session ended since it was validated.
      if (version === null) return res.status(401).type('text').send(await endReason(read.id));
      return res.sendStatus(204);
    } catch (error) {
      if (error.code !== '40001' || attempt === MAX_ATTEMPTS) throw error;
      console.log(`platform switch: version ${read.data_version} was stale, reading again`);
      [read] = await asUser(read.user_id, (q) => q('SELECT * FROM session_ext.get_session($1)', [read.id]));
    }
  }
});

app.post('/devices/revoke-others', requireSession, requireCsrfToken, async (req, res) => {
  await asUser(req.session.user_id, (q) => q('SELECT session_ext.revoke_other_sessions($1)', [req.session.id]));
  res.sendStatus(204);
});

app.post('/devices/:id/revoke', requireSession, requireCsrfToken, async (req, res) => {
  if (!isUuid(req.params.id)) return res.sendStatus(404);
  await asUser(req.session.user_id, (q) =>
    q("SELECT session_ext.revoke_session($1, 'revoked_by_user')", [req.params.id]),
  );
  res.sendStatus(204);
});

app.post('/signout', requireSession, requireCsrfToken, async (req, res) => {
  await asUser(req.session.user_id, (q) => q("SELECT session_ext.revoke_session($1, 'logout')", [req.session.id]));
  const options = cookieOptions(req);
  res.clearCookie(TOKEN_COOKIE, options).clearCookie(ID_COOKIE, options).sendStatus(204);
});

// Open tabs by user id; each is told about its user's session events.
const tabs = new Map();

function forget(userId, tab) {
  tabs.get(userId)?.delete(tab);
  if (tabs.get(userId)?.size === 0) tabs.delete(userId);
}

app.get('/events', requireSession, (req, res) => {
  const userId = req.session.user_id;
  const tab = { sessionId: req.session.id, res };
  if (!tabs.has(userId)) tabs.set(userId, new Set());
  tabs.get(userId).add(tab);
  res.set({ 'Content-Type': 'text/event-stream', 'X-Accel-Buffering': 'no' }).flushHeaders();
  const ping = setInterval(() => res.write(': ping\n\n'), 25_000); // keeps proxies from timing out
  req.on('close', () => {
    clearInterval(ping);
    forget(userId, tab);
  });
});

// Errors are logged by SQLSTATE and message only: pg errors never carry the query's parameters.
// 42501 is another user's session (a forged device id), 22023 a value session_ext refuses (a
// 1 MB user name); other 4xx come from body parsing.
app.use((error, req, res, next) => {
  console.error(`${req.method} ${req.path}: ${error.code ?? ''} ${error.message}`);
  const status = { 42501: 403, 22023: 400 }[error.code] ?? error.status ?? 500;
  res.status(status).type('text').send(status === 500 ? 'internal error' : 'request refused');
});

// One dedicated connection LISTENs for the whole server (a pooled one would drop the LISTEN when
// returned). The extension notifies on commit, with no token in the payload.
const listener = new pg.Client({ connectionString: DATABASE_URL });
listener.on('notification', ({ payload }) => {
  // Any role may NOTIFY on this channel, so nothing of the payload goes to the page and it
  // decides nothing: at worst a forged event refreshes a tab or shows it "signed out" early.
  let event;
  try {
    event = JSON.parse(payload);
  } catch {
    return;
  }
  for (const tab of tabs.get(event?.user_id) ?? []) {
    const ended = tab.sessionId === event.session_id && (event.event === 'revoke' || event.event === 'rotate');
    const name = ended ? 'signed-out' : 'changed';
    tab.res.write(`event: ${name}\ndata: ${name}\n\n`);
    // A tab of an ended session hears nothing more of its user.
    if (ended) {
      forget(event.user_id, tab);
      tab.res.end();
    }
  }
});
// Tabs must not silently miss a logout: without the listener, exit and let the supervisor restart.
listener.on('error', (error) => {
  console.error(`LISTEN connection lost: ${error.message}`);
  process.exit(1);
});
await listener.connect();
await listener.query('LISTEN session_ext');

const server = app.listen(Number(PORT), (error) => {
  if (error) throw error;
  console.log(`listening on http://localhost:${server.address().port}`);
});
