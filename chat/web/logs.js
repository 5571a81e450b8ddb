// The event log page (/logs): while its first page is open, new lines appear at the top by
// themselves (it asks for ?format=json every two seconds). Plain browser JavaScript, served as a
// file so the page needs no inline script (its Content-Security-Policy allows none).
//
// What the page was opened with comes from the server as data: the kind filter in the table's
// data-kind attribute, the token (when the page was opened with ?token=) from the address. Text
// from the log reaches the page through textContent only, never as HTML.
(() => {
  'use strict';

  const POLL_MS = 2000;
  const table = document.getElementById('log');
  if (!table || table.dataset.live !== '1') return;
  const kind = table.dataset.kind || '';
  const token = new URLSearchParams(location.search).get('token');
  const body = table.tBodies[0];

  function seen(id) {
    return body.querySelector(`tr[data-id="${CSS.escape(id)}"]`);
  }

  function cell(tr, text, cls) {
    const td = document.createElement('td');
    if (cls) td.className = cls;
    td.textContent = text;
    tr.appendChild(td);
  }

  function show(lines) {
    const fresh = lines.filter((l) => !seen(l.id));
    // Newest first in the answer: insert the oldest first, each at the top.
    for (let i = fresh.length - 1; i >= 0; i--) {
      const line = fresh[i];
      const event = Object.assign({}, line.event);
      const ts = event.ts || '';
      const k = event.kind || '';
      delete event.ts;
      delete event.kind;
      const tr = document.createElement('tr');
      tr.dataset.id = line.id;
      tr.className = 'new';
      cell(tr, String(ts));
      cell(tr, String(k));
      cell(tr, JSON.stringify(event), 'f');
      body.insertBefore(tr, body.firstChild);
    }
  }

  function poll() {
    let url = '/logs?format=json&limit=100';
    if (kind) url += '&kind=' + encodeURIComponent(kind);
    if (token) url += '&token=' + encodeURIComponent(token);
    fetch(url, { cache: 'no-store' })
      .then((r) => {
        if (!r.ok) throw new Error(`/logs answered ${r.status}`);
        return r.json();
      })
      .then((d) => show(Array.isArray(d.lines) ? d.lines : []))
      .catch(() => {
        /* the next poll tries again */
      })
      .finally(() => setTimeout(poll, POLL_MS));
  }

  setTimeout(poll, POLL_MS);
})();
