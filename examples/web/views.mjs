// The HTML of the app. Every value interpolated into `html` is escaped unless it is itself the
// result of `html`, so nothing from the database or the request reaches the page unescaped.

export const PLATFORMS = ['web', 'ios', 'android'];

class Html {
  constructor(text) {
    this.text = text;
  }

  toString() {
    return this.text;
  }
}

function escape(value) {
  if (value instanceof Html) return value.text;
  if (Array.isArray(value)) return value.map(escape).join('');
  return String(value ?? '').replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

export const html = (strings, ...values) =>
  new Html(strings.reduce((out, string, i) => out + escape(values[i - 1]) + string));

const time = (t) => (t ? t.toISOString().slice(0, 16).replace('T', ' ') : '');

function page(body, head = '') {
  return html`<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>session_ext · web example</title>
<link rel="stylesheet" href="/style.css">
${head}
</head>
<body>
<header><h1>session_ext</h1><span>reference web app</span></header>
<main>${body}</main>
</body>
</html>`.text;
}

export function signInPage(reason) {
  return page(html`<section class="card narrow">
  ${reason ? html`<p class="notice" data-testid="status">${reason}</p>` : ''}
  <h2>Sign in</h2>
  <form method="post" action="/signin">
    <label>User name <input name="name" required autocomplete="username" data-testid="name"></label>
    <label>Device name <input name="device" value="This browser" data-testid="device"></label>
    <button class="primary" data-testid="sign-in">Sign in</button>
  </form>
  <p class="muted">No password: authentication is out of scope for this example, and the user id
  is the UUIDv5 of the name. A real app checks a password (or another factor) first and creates
  the session only then.</p>
</section>`);
}

// The part of the page that changes: refreshed as a whole by the page script on every event.
export function panel(session, devices) {
  const data = session.session_data;
  return html`<div id="panel" data-version="${session.data_version}">
  <section class="card">
    <p>Signed in as <strong data-testid="user">${data.user_name}</strong>
       <code class="muted">${session.user_id}</code></p>
    <p class="platform">Platform <strong data-testid="platform">${data.platform}</strong>
       <span class="muted">switches <span data-testid="switches">${data.switches}</span>
       · data version <span data-testid="version">${session.data_version}</span></span></p>
    <div class="buttons">${PLATFORMS.map(
      (p) => html`<button data-post="/platform" data-body="${JSON.stringify({ platform: p })}"
        data-testid="switch-${p}" class="${p === data.platform ? 'current' : ''}">${p}</button>`,
    )}</div>
  </section>
  <section class="card">
    <h2>Devices</h2>
    <table data-testid="devices">
      <thead><tr><th>Device</th><th>IP</th><th>Signed in (UTC)</th><th>Last active (UTC)</th><th></th></tr></thead>
      <tbody>${devices.map(
        (d) => html`<tr data-testid="device-row">
        <td><strong>${d.device_info}</strong>${d.id === session.id ? html` <span class="badge">this device</span>` : ''}
          <div class="muted ua">${d.user_agent}</div></td>
        <td>${d.ip_address}</td><td class="time">${time(d.created_at)}</td><td class="time">${time(d.last_active_at)}</td>
        <td>${d.id === session.id ? '' : html`<button data-post="/devices/${d.id}/revoke" data-testid="revoke">Revoke</button>`}</td>
      </tr>`,
      )}</tbody>
    </table>
    <div class="buttons">
      <button data-post="/devices/revoke-others" data-testid="revoke-others">Log out everywhere else</button>
      <button data-post="/signout" data-testid="sign-out">Sign out</button>
    </div>
  </section>
</div>`;
}

export function appPage(session, devices, csrfToken) {
  return page(
    html`<p class="notice" data-testid="status" hidden></p>
${panel(session, devices)}`,
    html`<meta name="csrf-token" content="${csrfToken}">
<script type="module" src="/app.js"></script>
<template id="ended"><section class="card narrow"><p class="notice" data-testid="status"></p>
  <p><a href="/">Sign in again</a></p></section></template>`,
  );
}
