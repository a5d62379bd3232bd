// session_ext from Node.js (the `pg` package): login, authenticated requests, a session data
// change, "log out everywhere else" and logout.
//
// The application connects as a login role that was granted `authenticated` (PostgREST's
// `authenticator` in a Supabase project) and runs each request as PostgREST does: one
// transaction that sets the role and the JWT claims, then calls the functions.
//
//     DATABASE_URL=postgresql://authenticator@localhost/app node sessions.mjs
import { randomUUID } from 'node:crypto';
import pg from 'pg';

const client = new pg.Client({ connectionString: process.env.DATABASE_URL });

// One API request of `userId`: a transaction with PostgREST's role and claims.
async function request(userId, sql, params = []) {
  await client.query('BEGIN');
  try {
    await client.query(
      "SELECT set_config('role', 'authenticated', true), set_config('request.jwt.claims', $1, true)",
      [JSON.stringify({ sub: userId, role: 'authenticated' })],
    );
    const { rows } = await client.query(sql, params);
    await client.query('COMMIT');
    return rows;
  } catch (error) {
    await client.query('ROLLBACK');
    throw error;
  }
}

async function login(userId, device) {
  const [row] = await request(
    userId,
    `SELECT id, token FROM session_ext.create_user_session(
       user_id => $1, session_data => $2::json, device_info => $3,
       user_agent => 'examples/node', ip_address => '192.0.2.20')`,
    [userId, JSON.stringify({ theme: 'dark' }), device],
  );
  return row;
}

// What every authenticated request does first: the session behind the token, or null.
async function validate(userId, token) {
  const [row] = await request(
    userId,
    'SELECT id, user_id, session_data FROM session_ext.validate_session($1)',
    [token],
  );
  return row.id === null ? null : row;
}

function check(what, ok) {
  console.log(`${ok ? 'ok  ' : 'FAIL'}  ${what}`);
  if (!ok) process.exit(1);
}

await client.connect();
const user = randomUUID();

const laptop = await login(user, 'laptop');
const phone = await login(user, 'phone');
check('login on two devices returns two tokens', laptop.token !== phone.token);

const session = await validate(user, laptop.token);
check('a request with the laptop token finds the session', session?.user_id === user);
check('validate_session returns the session data', session.session_data.theme === 'dark');
check('a made-up token is refused', (await validate(user, 'x'.repeat(43))) === null);

const [update] = await request(
  user,
  `SELECT session_ext.update_session_data(
     session_id => $1, session_data => $2::jsonb, expected_version => 1) AS version`,
  [laptop.id, JSON.stringify({ cart: 3 })],
);
check('update_session_data merges and returns version 2', update.version === '2');
const merged = (await validate(user, laptop.token)).session_data;
check('the merged data is visible', merged.theme === 'dark' && merged.cart === 3);

const devices = await request(
  user,
  'SELECT device_info FROM session_ext.list_user_sessions() ORDER BY created_at',
);
check('list_user_sessions shows both devices', devices.map((d) => d.device_info).join() === 'laptop,phone');
const [others] = await request(user, 'SELECT session_ext.revoke_other_sessions($1) AS n', [laptop.id]);
check('log out everywhere else revokes the phone', others.n === '1');
check('the phone token no longer validates', (await validate(user, phone.token)) === null);
check('the laptop token still validates', (await validate(user, laptop.token)) !== null);

const [logout] = await request(user, 'SELECT session_ext.revoke_session($1) AS revoked', [laptop.id]);
check('logout revokes the laptop session', logout.revoked === true);
check('after logout the laptop token is refused', (await validate(user, laptop.token)) === null);

await client.end();
