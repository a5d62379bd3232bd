// Browser tests of the web example: Debian's chromium driven by playwright-core against the server
// (started here as child processes on free ports) and a tiny same-site "attacker" origin.
//
//     DATABASE_URL=postgresql://authenticator@/web_dev?host=...&port=... npm test
//
// Env: CHROMIUM (default /usr/bin/chromium), SCREENSHOT_DIR (default target/session_ext/screenshots).
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdirSync } from 'node:fs';
import { createServer } from 'node:http';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import pg from 'pg';
import { chromium } from 'playwright-core';

const here = path.dirname(fileURLToPath(import.meta.url));
const CHROMIUM = process.env.CHROMIUM ?? '/usr/bin/chromium';
const SCREENSHOT_DIR = process.env.SCREENSHOT_DIR ?? path.resolve(here, '../../../target/session_ext/screenshots');
const WITHIN = 2000; // ms for a change to reach another tab
const IDLE_SECONDS = 2;
const run = randomBytes(4).toString('hex'); // fresh user names, so earlier runs' sessions do not show

const servers = [];
let browser;
let attacker;
let db;
let locker;

// Starts server.mjs on a free port (PORT=0; it prints the port it got) and keeps its output.
function startServer(name, env = {}) {
  const child = spawn(process.execPath, [path.join(here, '../server.mjs')], {
    env: { ...process.env, PORT: '0', ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const server = { name, child, output: '' };
  servers.push(server);
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`${name} server did not start`)), 10_000);
    const collect = (chunk) => {
      server.output += chunk;
      const port = server.output.match(/listening on http:\/\/localhost:(\d+)/)?.[1];
      if (port && !server.url) {
        clearTimeout(timer);
        resolve(Object.assign(server, { url: `http://127.0.0.1:${port}` }));
      }
    };
    child.stdout.on('data', collect);
    child.stderr.on('data', collect);
    child.on('exit', (code) => reject(new Error(`${name} server exited with ${code}`)));
  });
}

// Another origin on the same host (other port): same site, so SameSite=Strict cookies still go
// with its form POSTs, and only the CSRF check (the origin check, for sign-in) can refuse them.
// /platform switches the victim's platform, /signin signs the victim's browser in as mallory.
function startAttacker(target) {
  const forms = {
    '/platform': '<input name="platform" value="android">',
    '/signin': '<input name="name" value="mallory"><input name="device" value="planted">',
  };
  attacker = createServer((req, res) => {
    res.setHeader('Content-Type', 'text/html');
    res.end(`<form method="post" action="${target}${req.url}">${forms[req.url] ?? ''}</form>
<script>document.forms[0].submit()</script>`);
  });
  return new Promise((resolve) => attacker.listen(0, '127.0.0.1', () => resolve(`http://127.0.0.1:${attacker.address().port}`)));
}

function check(what, ok) {
  if (!ok) throw new Error(`check failed: ${what}`);
}

const report = (scenario, ms) => console.log(`ok  ${scenario} (${ms} ms)`);

// The element with this data-testid once it shows exactly `text`.
const showing = (page, testId, text) => page.locator(`[data-testid="${testId}"]`, { hasText: new RegExp(`^${text}$`) });

// Ms from starting `action` until every locator is visible; at most WITHIN.
async function timed(action, ...locators) {
  const start = performance.now();
  await action();
  await Promise.all(locators.map((l) => l.waitFor({ timeout: WITHIN })));
  const ms = Math.round(performance.now() - start);
  check(`the change shows within ${WITHIN} ms (took ${ms} ms)`, ms <= WITHIN);
  return ms;
}

async function newDevice() {
  const context = await browser.newContext({ viewport: { width: 1000, height: 720 } });
  context.setDefaultTimeout(5000);
  return context;
}

async function signIn(context, url, name, device) {
  const page = await context.newPage();
  await page.goto(url);
  await page.getByTestId('name').fill(name);
  await page.getByTestId('device').fill(device);
  await page.getByTestId('sign-in').click();
  await showing(page, 'user', name).waitFor();
  return page;
}

async function openTab(context, url) {
  const page = await context.newPage();
  await page.goto(url);
  await page.getByTestId('user').waitFor();
  return page;
}

// The id of the session a browser context is signed in with (the session_id cookie).
const sessionIdOf = async (context) => (await context.cookies()).find((c) => c.name === 'session_id').value;

// A session as the database has it.
async function stored(sessionId) {
  const { rows } = await db.query(
    'SELECT session_data, data_version, revoked_at, revoke_reason FROM session_ext.get_session($1)',
    [sessionId],
  );
  return rows[0];
}

async function until(what, test) {
  const deadline = performance.now() + WITHIN;
  while (!(await test())) {
    if (performance.now() > deadline) throw new Error(`timed out waiting until ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}

const rowCount = (page, n) =>
  page.waitForFunction((n) => document.querySelectorAll('[data-testid="device-row"]').length === n, n, { timeout: WITHIN });

async function main() {
  const [app, idleApp] = await Promise.all([
    startServer('app'),
    startServer('idle', { SESSION_IDLE_TIMEOUT: `${IDLE_SECONDS} seconds` }),
  ]);
  const attackerUrl = await startAttacker(app.url);
  db = new pg.Client({ connectionString: process.env.DATABASE_URL });
  await db.connect();
  await db.query('SET ROLE service_role'); // the test inspects any user's sessions
  // Root runs chromium only without its sandbox. Signals are ours to handle (see shutdown).
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: ['--no-sandbox'],
    handleSIGINT: false,
    handleSIGTERM: false,
  });

  // 1. Sign out in one tab: the other tab of that browser shows "signed out" at once.
  const alice = await newDevice();
  const a1 = await signIn(alice, app.url, `alice-${run}`, 'laptop');
  const a2 = await openTab(alice, app.url);
  const aliceSession = await sessionIdOf(alice);
  let ms = await timed(() => a1.getByTestId('sign-out').click(), showing(a2, 'status', 'signed out'));
  await showing(a1, 'status', 'signed out').waitFor();
  check('sign-out revokes the session as a logout', (await stored(aliceSession)).revoke_reason === 'logout');
  check('sign-out clears the cookies', (await alice.cookies()).length === 0);
  report('sign out in tab 1, tab 2 shows "signed out"', ms);
  await alice.close();

  // 2. A platform switch reaches the other tab; two concurrent switches both count.
  const laptop = await newDevice();
  const b1 = await signIn(laptop, app.url, `bob-${run}`, 'laptop');
  const b2 = await openTab(laptop, app.url);
  ms = await timed(() => b2.getByTestId('switch-ios').click(), showing(b1, 'platform', 'ios'));
  report('switch platform in tab 2, tab 1 shows it', ms);

  const bobSession = await sessionIdOf(laptop);
  const before = await stored(bobSession);
  const switches = before.session_data.switches + 2;
  const retriesBefore = app.output.split('was stale').length;
  // A transaction holds the session's row (touch_session: locked, version unchanged) until both
  // switches wait for it, so both have read the same version and one must take the 40001 path;
  // unheld, one request usually finishes before the other starts.
  locker = new pg.Client({ connectionString: process.env.DATABASE_URL });
  await locker.connect();
  await locker.query("BEGIN; SELECT set_config('role', 'service_role', true)");
  await locker.query('SELECT session_ext.touch_session($1)', [bobSession]);
  ms = await timed(
    async () => {
      await Promise.all([b1.getByTestId('switch-android').click(), b2.getByTestId('switch-web').click()]);
      await until('both switches wait for the row', async () => {
        const { rows } = await db.query(
          `SELECT count(DISTINCT l.pid)::int AS n FROM pg_locks l JOIN pg_stat_activity a USING (pid)
            WHERE NOT l.granted AND a.datname = current_database()`,
        );
        return rows[0].n === 2;
      });
      await locker.query('COMMIT');
    },
    showing(b1, 'switches', switches),
    showing(b2, 'switches', switches),
  );
  const after = await stored(bobSession);
  const platform = after.session_data.platform;
  await showing(b1, 'platform', platform).waitFor({ timeout: WITHIN });
  await showing(b2, 'platform', platform).waitFor({ timeout: WITHIN });
  check('the database counts both switches', after.session_data.switches === switches);
  check('the data version went up by 2', Number(after.data_version) === Number(before.data_version) + 2);
  const retries = app.output.split('was stale').length - retriesBefore;
  check('a switch met a stale version and was retried', retries >= 1);
  report(`two concurrent switches both count (${retries} retried after 40001), both tabs show ${platform}`, ms);

  // 3. Another device of the same user revokes the first from its devices list.
  const phone = await newDevice();
  const c1 = await signIn(phone, app.url, `bob-${run}`, 'phone');
  await rowCount(c1, 2);
  mkdirSync(SCREENSHOT_DIR, { recursive: true });
  await c1.screenshot({ path: path.join(SCREENSHOT_DIR, 'web-devices.png'), fullPage: true });
  ms = await timed(
    () => c1.getByTestId('revoke').click(),
    showing(b1, 'status', 'signed out'),
    showing(b2, 'status', 'signed out'),
  );
  await rowCount(c1, 1);
  check('the laptop is revoked', (await stored(bobSession)).revoke_reason === 'revoked_by_user');
  report('a second device revokes the first, its tabs show "signed out"', ms);
  await laptop.close();

  // 4. Cross-site requests without the session's CSRF token are refused and change nothing.
  const phoneSession = await sessionIdOf(phone);
  const untouched = await stored(phoneSession);
  const attack = await phone.newPage();
  const started = performance.now();
  const forged = async (route) => {
    const [response] = await Promise.all([
      attack.waitForResponse((r) => r.url() === `${app.url}${route}` && r.request().method() === 'POST'),
      attack.goto(`${attackerUrl}${route}`),
    ]);
    return { status: response.status(), text: await response.text() };
  };
  const refused = await forged('/platform');
  ms = Math.round(performance.now() - started);
  check(`the forged form POST is refused with 403 (got ${refused.status})`, refused.status === 403);
  check('the refusal is the CSRF check (the cookie was sent)', refused.text.includes('CSRF'));
  const planted = await forged('/signin');
  check(`a forged sign-in is refused with 403 (got ${planted.status})`, planted.status === 403);
  check('the browser keeps its own session', (await sessionIdOf(phone)) === phoneSession);
  // Every state-changing route of the page, from the page's own origin: without the header, and
  // with a wrong token.
  const statuses = await c1.evaluate(async (routes) => {
    const post = (route, headers) =>
      fetch(route, { method: 'POST', headers: { 'Content-Type': 'application/json', ...headers }, body: '{"platform":"ios"}' })
        .then((response) => response.status);
    const results = [];
    for (const route of routes) {
      results.push(await post(route, {}), await post(route, { 'X-CSRF-Token': 'A'.repeat(43) }));
    }
    return results;
  }, ['/platform', '/signout', '/devices/revoke-others', `/devices/${phoneSession}/revoke`]);
  check(`every POST without the CSRF token or with a wrong one is refused with 403 (got ${statuses})`,
    statuses.every((status) => status === 403));
  const now = await stored(phoneSession);
  check('nothing changed in the database', JSON.stringify(now) === JSON.stringify(untouched));
  await c1.reload();
  await showing(c1, 'version', now.data_version).waitFor();
  await showing(c1, 'platform', untouched.session_data.platform).waitFor();
  report('cross-site form POSTs (a switch without CSRF token, a sign-in) and every POST without or with a wrong token get 403, nothing changes', ms);

  // Signing in again from the page's own origin ends the session the browser had.
  const signedInAgain = await c1.evaluate(async (name) => {
    const response = await fetch('/signin', { method: 'POST', body: new URLSearchParams({ name, device: 'phone' }) });
    return response.ok;
  }, `bob-${run}`);
  check('signing in again works', signedInAgain && (await sessionIdOf(phone)) !== phoneSession);
  check('signing in again revoked the previous session', (await stored(phoneSession)).revoke_reason === 'logout');
  await phone.close();

  // 5. A session that idles out shows "session expired" on its next action.
  const idle = await newDevice();
  const d1 = await signIn(idle, idleApp.url, `dave-${run}`, 'laptop');
  await d1.waitForTimeout(IDLE_SECONDS * 1000 + 500);
  ms = await timed(() => d1.getByTestId('switch-ios').click(), showing(d1, 'status', 'session expired'));
  report(`idle for ${IDLE_SECONDS}.5 s, the next action shows "session expired"`, ms);
}

async function shutdown() {
  await browser?.close().catch(() => {});
  for (const { child } of servers) child.kill();
  attacker?.close();
  await db?.end().catch(() => {});
  await locker?.end().catch(() => {});
}

for (const signal of ['SIGINT', 'SIGTERM']) {
  process.on(signal, async () => {
    await shutdown();
    process.exit(1);
  });
}

try {
  await main();
} catch (error) {
  console.error(`FAIL  ${error.stack}`);
  for (const { name, output } of servers) console.error(`--- ${name} server output ---\n${output}`);
  process.exitCode = 1;
} finally {
  await shutdown();
}
