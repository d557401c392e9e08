// The status page's live part: refresh the server-rendered state, show events as they
// come, and, once unlocked with the admin token, call the admin API. Nothing else.
"use strict";
(() => {
  const live = document.getElementById("live");
  const events = document.getElementById("events");
  const feedState = document.getElementById("feed-state");
  const unlock = document.getElementById("unlock");
  const outcome = document.getElementById("outcome");
  const tokenRequired = document.body.dataset.tokenRequired === "true";
  let token = sessionStorage.getItem("meshnode-token");

  function applyLock() {
    const unlocked = token !== null;
    unlock.hidden = unlocked;
    document.querySelectorAll(".control").forEach((element) => { element.hidden = !unlocked; });
  }

  async function refresh() {
    try {
      const response = await fetch("/status/live", { cache: "no-store" });
      if (response.ok) {
        live.innerHTML = await response.text();
        applyLock();
      }
    } catch (error) {
      feedState.textContent = "The node is not answering: " + error;
    }
  }

  function connect() {
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    const socket = new WebSocket(`${scheme}://${location.host}/admin/events`);
    socket.onopen = () => { feedState.textContent = "Connected: newest first."; };
    socket.onmessage = (message) => {
      const event = JSON.parse(message.data);
      const item = document.createElement("li");
      const time = new Date((event.timestamp || Date.now() / 1000) * 1000).toLocaleTimeString();
      const { type, timestamp, ...rest } = event;
      item.textContent = `${time} ${type} ${JSON.stringify(rest)}`;
      events.prepend(item);
      while (events.children.length > 100) events.lastElementChild.remove();
      refresh();
    };
    socket.onclose = () => {
      feedState.textContent = "Disconnected; reconnecting…";
      setTimeout(connect, 2000);
    };
  }

  async function call(method, path, what) {
    const headers = { "x-meshnode-admin": "1" };
    if (token) headers.Authorization = `Bearer ${token}`;
    const response = await fetch(path, { method, headers });
    outcome.textContent = response.ok
      ? `${what}: done.`
      : `${what}: refused (${response.status}${response.status === 401 ? ", check the token" : ""}).`;
    refresh();
  }

  unlock.addEventListener("submit", (submitted) => {
    submitted.preventDefault();
    token = document.getElementById("token").value;
    sessionStorage.setItem("meshnode-token", token);
    applyLock();
  });

  document.addEventListener("click", (clicked) => {
    const button = clicked.target.closest("button");
    if (!button) return;
    const action = button.dataset.action;
    if (action === "lock") {
      token = null;
      sessionStorage.removeItem("meshnode-token");
      applyLock();
    } else if (action === "reload") {
      call("POST", "/admin/reload", "Reload");
    } else if (action === "drain" && confirm("Drain this node? It stops taking new connections.")) {
      call("POST", "/admin/drain", "Drain");
    } else if (button.dataset.breaker) {
      const name = button.dataset.breaker;
      const state = button.dataset.state;
      call("POST", `/admin/breakers/${encodeURIComponent(name)}?state=${state}`, `Breaker ${name} ${state}`);
    }
  });

  if (!tokenRequired) {
    document.getElementById("unlock-help").textContent =
      "Controls are locked. This node's admin API takes no token: leave the field empty.";
  }
  applyLock();
  setInterval(refresh, 2000);
  connect();
})();
