// The page's behaviour: every POST sends the CSRF token rendered into the page, and the server's
// events (over SSE) refresh the panel or end the page at once.
const csrfToken = document.querySelector('meta[name="csrf-token"]').content;
const events = new EventSource('/events');

function ended(reason) {
  events.close();
  const view = document.getElementById('ended').content.cloneNode(true);
  view.querySelector('[data-testid="status"]').textContent = reason;
  document.querySelector('main').replaceChildren(view);
}

async function failed(response) {
  const message = await response.text();
  if (response.status === 401) return ended(message);
  const status = document.querySelector('[data-testid="status"]');
  status.textContent = message;
  status.hidden = false;
}

// Replaces the panel unless a newer one (higher data version) is already shown: responses to
// concurrent refreshes may arrive out of order.
async function refresh() {
  const response = await fetch('/panel');
  if (!response.ok) return failed(response);
  const template = document.createElement('template');
  template.innerHTML = await response.text();
  const fresh = template.content.firstElementChild;
  const shown = document.getElementById('panel');
  if (shown && Number(fresh.dataset.version) >= Number(shown.dataset.version)) shown.replaceWith(fresh);
}

document.addEventListener('click', async (event) => {
  const button = event.target.closest('button[data-post]');
  if (!button) return;
  const response = await fetch(button.dataset.post, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json', 'X-CSRF-Token': csrfToken },
    body: button.dataset.body ?? '{}',
  });
  if (!response.ok) return failed(response);
  if (button.dataset.post === '/signout') return ended('signed out');
  refresh();
});

events.addEventListener('signed-out', () => ended('signed out'));
events.addEventListener('changed', refresh);
