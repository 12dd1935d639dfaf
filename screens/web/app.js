// The node's page: draws what /web/events pushes (swarm.board's snapshot), uploads a video,
// plays a job's HLS stream. No framework and nothing from the internet: the LAN may have none.
"use strict";
const $ = (id) => document.getElementById(id);
const el = (tag, attrs = {}, ...kids) => {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") e.className = v; else if (k === "text") e.textContent = v;
    else e.setAttribute(k, v);
  }
  for (const kid of kids) e.append(kid);
  return e;
};
window.board = null;  // the last snapshot, for tests and curious people
window.player = {mode: null, job: null, playing: false, errors: []};

function fmtTime(s) {
  if (s === null || s === undefined) return "";
  s = Math.round(s);
  const m = Math.floor(s / 60), r = s % 60;
  return m ? `${m} min ${String(r).padStart(2, "0")} s` : `${r} s`;
}

// -- sign in (a closed swarm) -----------------------------------------------------------
if (document.body.classList.contains("locked")) {
  $("loginform").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    $("loginerr").textContent = "";
    const r = await fetch("/web/login", {method: "POST",
      headers: {"content-type": "application/x-www-form-urlencoded"},
      body: new URLSearchParams({secret: $("secret").value})});
    if (r.ok) location.reload();
    else $("loginerr").textContent = r.status === 403 ? "That is not the secret." : await r.text();
  });
} else {
  $("mode").textContent = document.body.classList.contains("open")
    ? "open swarm: anyone on this LAN may use it" : "closed swarm";
  connect();
  setupUpload();
}

// -- the live board ----------------------------------------------------------------------
function connect() {
  const source = new EventSource("/web/events");
  source.onopen = () => { $("live").textContent = "live"; $("live").classList.remove("off"); };
  source.onerror = () => { $("live").textContent = "reconnecting"; $("live").classList.add("off"); };
  source.onmessage = (m) => render(JSON.parse(m.data));
}

let profilesShown = false;
function render(b) {
  window.board = b;
  const rows = $("devicerows");
  rows.replaceChildren(...b.devices.map((d) => el("tr", {class: d.here ? "here" : ""},
    el("td", {text: d.name + (d.here ? " (this node)" : "")}), el("td", {text: d.arch}),
    el("td", {text: d.speed ? d.speed.toFixed(2) : "?"}), el("td", {text: d.state}),
    el("td", {text: d.paired ? "yes" : "no"}))));
  const list = $("joblist");
  if (!b.jobs.length) list.replaceChildren(el("p", {class: "quiet", text: "No job yet."}));
  else list.replaceChildren(...b.jobs.slice().reverse().map(jobCard));
  if (!profilesShown && b.profiles) {
    profilesShown = true;
    $("profile").replaceChildren(...b.profiles.map((p) => el("option", {value: p, text: p})));
    if (b.profiles.includes("480p")) $("profile").value = "480p";
    if (!b.uploads) {
      $("upform").hidden = true;
      $("upmsg").textContent = "This node takes no uploads (it runs with --no-uploads).";
    }
  }
  const live = b.jobs.slice().reverse().find((j) => j.hls);
  if (live && window.player.job === null) play(live);
}

function jobCard(j) {
  const pct = Math.round(j.progress * 100);
  const bits = [`${pct} %`];
  if (j.state === "running" && j.eta_s !== null) bits.push(`ETA ${fmtTime(j.eta_s)}`);
  if (j.elapsed_s) bits.push(`${fmtTime(j.elapsed_s)} so far`.replace(" so far", j.state === "done" ? "" : " so far"));
  if (j.peers.length) bits.push(`with ${j.peers.join(", ")}`);
  if (j.role === "peer") bits.push(`${j.done_chunks} chunk(s) encoded here`);
  const head = el("div", {class: "head"}, el("span", {class: "title", text: j.title}),
    el("span", {class: `state ${j.state}`, text: j.state}), el("span", {class: "quiet", text: j.profile}),
    el("span", {class: "quiet", text: bits.join(" · ")}));
  const card = el("div", {class: "job", id: `job-${j.id}`, "data-state": j.state}, head,
    el("div", {class: "bar"}, el("div", {style: `width:${pct}%`})));
  if (j.chunks.length) {
    card.append(el("div", {class: "map", "data-map": j.chunks},
      ...Array.from(j.chunks, (c, i) => el("span", {class: c === "." ? "p" : c, title: `chunk ${i}`}))));
  }
  const actions = el("div", {class: "actions"});
  if (j.download) actions.append(el("a", {class: "button download", href: `/web/jobs/${j.id}/result`, download: "", text: "Download the result"}));
  if (j.hls) {
    const b = el("button", {class: "link", type: "button", text: "Watch"});
    b.onclick = () => play(j, true);
    actions.append(" ", b);
  }
  if (j.error) actions.append(el("span", {class: "error", text: j.error}));
  card.append(actions);
  return card;
}

// -- the player -------------------------------------------------------------------------
let hls = null;
// ?hlsjs: use hls.js even where the browser plays HLS itself (a test of both paths).
const forceHlsjs = new URLSearchParams(location.search).has("hlsjs");
function play(j, chosen = false) {
  if (window.player.job === j.id && !chosen) return;
  window.player.job = j.id;
  const src = `/web/jobs/${j.id}/hls/master.m3u8`;
  const video = $("video"), note = $("playernote");
  $("player").hidden = false;
  $("playertitle").textContent = j.title;
  video.onplaying = () => { window.player.playing = true; };
  if (hls) { hls.destroy(); hls = null; }
  if (!forceHlsjs && video.canPlayType("application/vnd.apple.mpegurl")) {
    window.player.mode = "native";
    video.src = src;
    video.play().catch(() => {});
  } else if (window.board.hlsjs) {
    window.player.mode = "hls.js";
    const start = () => {
      hls = new Hls();
      hls.on(Hls.Events.ERROR, (_, d) => window.player.errors.push(d.details + (d.fatal ? " (fatal)" : "")));
      hls.on(Hls.Events.MANIFEST_PARSED, () => video.play().catch(() => {}));
      hls.loadSource(src);
      hls.attachMedia(video);
    };
    if (window.Hls) start();
    else document.head.append(Object.assign(el("script", {src: "/web/hls.min.js"}), {onload: start}));
  } else {
    window.player.mode = "none";
    note.textContent = "This browser does not play HLS itself. Give the node a copy of hls.js: "
      + "`npm pack hls.js` (or download hls.min.js from its release), then run "
      + "`swarm join --hlsjs path/to/hls.min.js` or set SWARM_HLSJS.";
    return;
  }
  note.textContent = j.hls_ended ? "" : "Playing while it encodes: the stream grows as chunks finish.";
}

// -- upload -----------------------------------------------------------------------------
function setupUpload() {
  $("upform").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const f = $("file").files[0];
    if (!f) return;
    const max = window.board ? window.board.max_upload_bytes : Infinity;
    if (f.size > max) { $("upmsg").textContent = `Too large: this node takes up to ${Math.floor(max / 2 ** 20)} MB.`; return; }
    const xhr = new XMLHttpRequest();
    const q = new URLSearchParams({name: f.name, profile: $("profile").value});
    xhr.open("POST", `/web/upload?${q}`);
    const prog = $("upprog");
    prog.hidden = false; prog.value = 0;
    $("upbutton").disabled = true;
    xhr.upload.onprogress = (e) => { if (e.lengthComputable) prog.value = e.loaded / e.total; };
    xhr.onload = () => {
      $("upbutton").disabled = false; prog.hidden = true;
      $("upmsg").textContent = xhr.status === 201 ? `Uploaded ${f.name}: queued.` : `Refused: ${xhr.responseText}`;
    };
    xhr.onerror = () => { $("upbutton").disabled = false; $("upmsg").textContent = "The upload broke off."; };
    xhr.send(f);
  });
}
