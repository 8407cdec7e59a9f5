// Mirage web client: camera + reference photo → WebRTC session → swapped video.
// Standard APIs only (Chromium and Firefox); no build step.
// Protocol: GET config, then one WebSocket at ws/session carrying a non-trickle
// offer + the reference; the answer comes back on it, then stats and events
// once a second. Options go over the "control" data channel.
"use strict";

(() => {
  const ACCEPTED_TYPES = ["image/jpeg", "image/png", "image/webp"];
  const MAX_SIDE = 4096;
  const ICE_GATHER_TIMEOUT_MS = 8000;
  const CONNECT_TIMEOUT_MS = 30000;

  // Plain-words messages per server error code (the server's own sentence is shown after them).
  const CODE_MESSAGES = {
    no_face: "No face was found in the reference photo. Choose a photo where one face is clearly visible.",
    bad_reference: "The reference photo cannot be used.",
    server_full: "The server is full right now. Please try again in a minute.",
    unauthorized: "The API key was not accepted.",
    bad_offer: "The browser's connection offer was refused.",
    bad_request: "The server did not accept the request.",
    message_too_big: "The server refused a message larger than its 16 MiB limit. Choose a smaller photo.",
  };
  const CLOSE_CODES = { 1009: "message_too_big", 1013: "server_full", 4401: "unauthorized", 4400: "bad_request" };

  const $ = (id) => document.getElementById(id);
  const ui = {
    reference: $("reference"), preview: $("reference-preview"), previewEmpty: $("reference-empty"),
    referenceStatus: $("reference-status"), apiKeyField: $("api-key-field"), apiKey: $("api-key"),
    swapper: $("swapper"), maxFaces: $("max-faces"), fallback: $("fallback"), mouthMask: $("mouth-mask"),
    hearAudio: $("hear-audio"), controlStatus: $("control-status"), start: $("start"), stop: $("stop"),
    status: $("status"), error: $("error"), notice: $("notice"), local: $("local"), remote: $("remote"),
    ovFps: $("ov-fps"), ovLatency: $("ov-latency"), ovFaces: $("ov-faces"), ovState: $("ov-state"),
    events: $("events"),
  };

  // The face enhancer (offered by /config's "enhancers"; "none" when the server has none).
  ui.enhancer = $("enhancer");
  // The voice controls (sent with set_options once live: the offer's options carry no voice).
  ui.voice = $("voice");
  ui.voicePitch = $("voice-pitch");
  ui.voiceFormant = $("voice-formant");

  // Everything a test (or a curious person in the console) may want to read.
  const state = {
    phase: "loading", // loading | idle | connecting | live | error
    config: null,
    reference: null, // {b64, bytes, type, width, height}
    stream: null, pc: null, ws: null, channel: null,
    sessionId: null, serverStats: null, fps: 0, latencyMs: null, rttMs: null,
    errors: [], events: [], acks: [],
    nextId: 1, pending: new Map(), timers: [], refusal: null,
    // A live session whose WebSocket dies (or goes silent: the server sends stats every
    // second) ends its peer connection at once and reconnects, a few times, with back-off.
    lastMessageAt: 0, reconnects: 0, reconnectTimer: null,
    // "Server full": wait at least the server's retry_after_s (back-off, jitter), then try again;
    // "server_shutdown" / close 1001 (the replica is going away): reconnect at once.
    fullRetries: 0, moves: 0, goingAway: false,
    // Consent to use the face (asked once, remembered in this browser only) and the disclosure.
    consent: false, synthetic: false,
  };
  const SILENCE_TIMEOUT_MS = 5000;
  const MAX_RECONNECTS = 5;
  const MAX_FULL_RETRIES = 20;
  const RETRY_MAX_MS = 15000;

  // Never before the server's hint; exponential without one; jitter only lengthens the wait,
  // so pages refused together come back spread out (mirage/client/retry.py has the same rule).
  function retryDelayMs(attempt, hintS) {
    let base = Math.min(RETRY_MAX_MS, 1000 * 2 ** attempt);
    if (typeof hintS === "number" && hintS >= 0) base = Math.max(base, Math.min(hintS * 1000, RETRY_MAX_MS));
    return base * (1 + Math.random() * 0.3);
  }

  function hintFromReason(reason) {
    const match = /retry_after_s=([0-9]+(?:\.[0-9]+)?)/.exec(reason || "");
    return match ? Number(match[1]) : null;
  }
  window.mirage = state;

  // ------------------------------------------------------------------ messages

  function setPhase(phase) {
    state.phase = phase;
    document.body.dataset.state = phase;
    ui.ovState.textContent = phase;
    const busy = phase === "connecting" || phase === "live";
    ui.start.disabled = busy || phase === "loading" || !state.reference || !state.consent;
    ui.stop.disabled = !busy;
  }

  function showError(text) {
    state.errors.push(text);
    ui.error.textContent = text;
    ui.error.hidden = false;
  }

  function clearError() {
    ui.error.hidden = true;
    ui.error.textContent = "";
  }

  function showNotice(text) {
    ui.notice.textContent = text;
    ui.notice.hidden = !text;
  }

  function setStatus(text) {
    ui.status.textContent = text;
  }

  function logEvent(text) {
    state.events.push(text);
    const item = document.createElement("li");
    item.textContent = `${new Date().toLocaleTimeString()} — ${text}`;
    ui.events.prepend(item);
    while (ui.events.children.length > 50) ui.events.lastChild.remove();
  }

  function describeRefusal(code, message) {
    const plain = CODE_MESSAGES[code];
    if (plain && message && !plain.includes(message)) return `${plain} (${message})`;
    return plain || message || "The server refused the session.";
  }

  // ------------------------------------------------------------------ config

  async function loadConfig() {
    let response;
    try {
      response = await fetch(new URL("config", document.baseURI), { cache: "no-store" });
    } catch (err) {
      throw new Error("Cannot reach the Mirage server. Check that it is running and reload the page.");
    }
    if (!response.ok) throw new Error(`The server's settings could not be loaded (HTTP ${response.status}).`);
    return response.json();
  }

  function applyConfig(config) {
    state.config = config;
    const swappers = Array.isArray(config.swappers) && config.swappers.length ? config.swappers : ["mesh"];
    ui.swapper.replaceChildren(...swappers.map((name) => new Option(name, name)));
    const fallbacks = Array.isArray(config.fallbacks) ? config.fallbacks : null;
    if (fallbacks) {
      for (const option of Array.from(ui.fallback.options)) {
        if (!fallbacks.includes(option.value)) option.remove();
      }
    }
    if (config.default_fallback && Array.from(ui.fallback.options).some((o) => o.value === config.default_fallback)) {
      ui.fallback.value = config.default_fallback;
    }
    if (Number.isInteger(config.max_faces_limit) && config.max_faces_limit >= 1) ui.maxFaces.max = String(config.max_faces_limit);
    if (Number.isInteger(config.max_faces) && config.max_faces >= 1) ui.maxFaces.value = String(config.max_faces);
    ui.apiKeyField.hidden = !config.require_api_key;
    renderLicences();
    const enhancers = Array.isArray(config.enhancers) ? config.enhancers : [];
    ui.enhancer.replaceChildren(
      new Option(enhancers.length ? "none" : "none (no enhancer on this server)", "none"),
      ...enhancers.map((name) => new Option(name, name)),
    );
    ui.enhancer.disabled = enhancers.length === 0;
    applyVoices(config);
    // A page opened as /?token=… (a short-lived token from POST /token) uses it as its key.
    const token = new URLSearchParams(window.location.search).get("token");
    if (token && !ui.apiKey.value) ui.apiKey.value = token;
  }

  // ------------------------------------------------------------------ reference photo

  function sniffType(bytes) {
    if (bytes.length >= 3 && bytes[0] === 0xff && bytes[1] === 0xd8 && bytes[2] === 0xff) return "image/jpeg";
    if (bytes.length >= 8 && [0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a].every((b, i) => bytes[i] === b)) return "image/png";
    if (bytes.length >= 12 && String.fromCharCode(...bytes.slice(0, 4)) === "RIFF" &&
        String.fromCharCode(...bytes.slice(8, 12)) === "WEBP") return "image/webp";
    return null;
  }

  function toBase64(bytes) {
    let binary = "";
    const chunk = 0x8000;
    for (let i = 0; i < bytes.length; i += chunk) {
      binary += String.fromCharCode.apply(null, bytes.subarray(i, i + chunk));
    }
    return btoa(binary);
  }

  function imageSize(url) {
    return new Promise((resolve, reject) => {
      const img = new Image();
      img.onload = () => resolve({ width: img.naturalWidth, height: img.naturalHeight });
      img.onerror = () => reject(new Error("undecodable"));
      img.src = url;
    });
  }

  async function readReference(file) {
    const maxBytes = (state.config && state.config.max_reference_bytes) || 10 * 1024 * 1024;
    if (file.size === 0) throw new Error("The chosen file is empty.");
    if (file.size > maxBytes) {
      throw new Error(`The photo is too large (${(file.size / 1048576).toFixed(1)} MB); the limit is ${(maxBytes / 1048576).toFixed(0)} MB.`);
    }
    const bytes = new Uint8Array(await file.arrayBuffer());
    const type = sniffType(bytes);
    if (!type || !ACCEPTED_TYPES.includes(type)) {
      throw new Error("That file is not a JPEG, PNG or WebP photo.");
    }
    const url = URL.createObjectURL(new Blob([bytes], { type }));
    let size;
    try {
      size = await imageSize(url);
    } catch (err) {
      URL.revokeObjectURL(url);
      throw new Error("The photo could not be read: the file looks damaged.");
    }
    const maxSide = (state.config && state.config.max_reference_side) || MAX_SIDE;
    if (size.width > maxSide || size.height > maxSide) {
      URL.revokeObjectURL(url);
      throw new Error(`The photo is ${size.width}×${size.height} pixels; at most ${maxSide}×${maxSide} is accepted.`);
    }
    return { b64: toBase64(bytes), bytes: bytes.length, type, url, ...size };
  }

  async function onReferenceChosen() {
    const file = ui.reference.files && ui.reference.files[0];
    if (!file) return;
    ui.referenceStatus.textContent = "Checking the photo…";
    ui.referenceStatus.className = "field-status";
    let reference;
    try {
      reference = await readReference(file);
    } catch (err) {
      ui.referenceStatus.textContent = err.message;
      ui.referenceStatus.className = "field-status bad";
      showError(err.message);
      return;
    }
    if (state.reference && state.reference.url) URL.revokeObjectURL(state.reference.url);
    state.reference = reference;
    ui.preview.src = reference.url;
    ui.preview.hidden = false;
    ui.previewEmpty.hidden = true;
    ui.referenceStatus.textContent = `${reference.width}×${reference.height}, ${(reference.bytes / 1024).toFixed(0)} KB`;
    ui.referenceStatus.className = "field-status good";
    clearError();
    if (state.phase === "live") {
      sendControl({ type: "set_reference", reference_b64: reference.b64 }, "New reference photo");
    } else {
      setPhase(state.phase === "loading" ? "loading" : "idle");
      setStatus("Ready: press Start.");
    }
  }

  // ------------------------------------------------------------------ camera

  async function openCamera() {
    const maxFps = (state.config && state.config.max_fps) || 30;
    const video = { width: { ideal: 640 }, height: { ideal: 480 }, frameRate: { ideal: Math.min(30, maxFps), max: maxFps } };
    if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
      throw new Error("This browser cannot share a camera here (the page must be opened over https or on localhost).");
    }
    try {
      return await navigator.mediaDevices.getUserMedia({ video, audio: true });
    } catch (first) {
      // The microphone may be missing or refused on its own: try the camera alone.
      try {
        const stream = await navigator.mediaDevices.getUserMedia({ video });
        showNotice("The microphone is not available: sending video only.");
        return stream;
      } catch (err) {
        throw new Error(cameraMessage(err));
      }
    }
  }

  function cameraMessage(err) {
    switch (err && err.name) {
      case "NotAllowedError":
      case "SecurityError":
        return "Camera access was denied. Allow the camera for this site in the browser's settings, then press Start again.";
      case "NotFoundError":
      case "OverconstrainedError":
        return "No camera was found. Connect a camera and press Start again.";
      case "NotReadableError":
      case "AbortError":
        return "The camera could not be started: another application may be using it.";
      default:
        return `The camera could not be opened (${(err && err.message) || err}).`;
    }
  }

  // ------------------------------------------------------------------ session

  function options() {
    const limit = parseInt(ui.maxFaces.max, 10) || 8;
    const faces = Math.max(1, Math.min(limit, parseInt(ui.maxFaces.value, 10) || 1));
    return {
      swapper: ui.swapper.value,
      max_faces: faces,
      mouth_mask: ui.mouthMask.checked,
      fallback: ui.fallback.value,
      enhancer: ui.enhancer.value || "none",
    };
  }

  // ------------------------------------------------------------------ voice

  function applyVoices(config) {
    const voices = Array.isArray(config.voices) && config.voices.length ? config.voices : ["off"];
    const label = (name) => (name === "off" ? "off: my own voice" : name === "custom" ? "custom: the pitch and timbre below" : name);
    ui.voice.replaceChildren(...voices.map((name) => new Option(label(name), name)));
    const fallback = config.default_voice && typeof config.default_voice.voice === "string" ? config.default_voice.voice : "off";
    ui.voice.value = voices.includes(fallback) ? fallback : voices[0];
    state.defaultVoice = ui.voice.value;
    renderVoiceInputs();
  }

  function renderVoiceInputs() {
    const off = ui.voice.value === "off";
    ui.voicePitch.disabled = off;
    ui.voiceFormant.disabled = off;
  }

  function voiceOptions() {
    const message = { voice: ui.voice.value };
    if (ui.voice.value === "off") return message;
    const pitch = parseFloat(ui.voicePitch.value);
    const formant = parseFloat(ui.voiceFormant.value);
    if (Number.isFinite(pitch)) message.pitch_semitones = pitch;
    if (Number.isFinite(formant)) message.formant = formant;
    return message;
  }

  function onVoiceChanged() {
    renderVoiceInputs();
    if (state.phase !== "live") return; // sent when the session goes live
    state.voice = voiceOptions();
    sendControl({ type: "set_options", ...state.voice }, "Voice");
  }

  function waitForIceGathering(pc) {
    if (pc.iceGatheringState === "complete") return Promise.resolve();
    return new Promise((resolve) => {
      const done = () => {
        pc.removeEventListener("icegatheringstatechange", check);
        clearTimeout(timer);
        resolve();
      };
      const check = () => { if (pc.iceGatheringState === "complete") done(); };
      // An unreachable STUN/TURN server can stall gathering: send what we have.
      const timer = setTimeout(done, ICE_GATHER_TIMEOUT_MS);
      pc.addEventListener("icegatheringstatechange", check);
    });
  }

  function preferH264(transceiver) {
    if (!transceiver.setCodecPreferences || !window.RTCRtpReceiver || !RTCRtpReceiver.getCapabilities) return;
    const caps = RTCRtpReceiver.getCapabilities("video");
    if (!caps) return;
    const h264 = caps.codecs.filter((c) => c.mimeType.toLowerCase() === "video/h264");
    if (!h264.length) return;
    const rest = caps.codecs.filter((c) => c.mimeType.toLowerCase() !== "video/h264");
    try { transceiver.setCodecPreferences([...h264, ...rest]); } catch (err) { /* keep the default order */ }
  }

  function wsUrl() {
    const url = new URL("ws/session", document.baseURI);
    url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
    return url.href;
  }

  async function start() {
    if (!state.reference) {
      showError("Choose a reference photo first.");
      return;
    }
    if (!state.consent) {
      showError("Confirm first that you have the right to use the face in the photo.");
      ui.consent.hidden = false;
      return;
    }
    if (state.config.require_api_key && !ui.apiKey.value.trim()) {
      showError("This server requires an API key: enter it above.");
      ui.apiKey.focus();
      return;
    }
    clearError();
    showNotice("");
    state.refusal = null;
    setPhase("connecting");
    setStatus("Opening the camera…");
    try {
      state.stream = await openCamera();
    } catch (err) {
      fail(err.message);
      return;
    }
    ui.local.srcObject = state.stream;

    setStatus("Connecting…");
    const config = state.config;
    const iceServers = await sessionIceServers();
    const pc = new RTCPeerConnection({
      iceServers,
      iceTransportPolicy: config.force_relay ? "relay" : "all",
    });
    state.pc = pc;
    const remoteStream = new MediaStream();
    ui.remote.srcObject = remoteStream;
    pc.ontrack = (event) => {
      remoteStream.addTrack(event.track);
      if (event.track.kind === "video") watchRemoteVideo();
    };
    pc.oniceconnectionstatechange = () => {
      // Browsers without connectionState (older Firefox) still report ICE.
      if (pc.connectionState === undefined && state.phase === "connecting" &&
          (pc.iceConnectionState === "connected" || pc.iceConnectionState === "completed")) goLive();
      if (pc.connectionState === undefined && pc.iceConnectionState === "failed") {
        fail("The video connection failed: the browser and the server could not reach each other (a firewall may block UDP).");
      }
    };
    pc.onconnectionstatechange = () => {
      logEvent(`connection ${pc.connectionState}`);
      if (pc.connectionState === "connected" && state.phase === "connecting") goLive();
      if (pc.connectionState === "failed") {
        fail("The video connection failed: the browser and the server could not reach each other (a firewall may block UDP).");
      }
    };

    const [videoTrack] = state.stream.getVideoTracks();
    const videoTransceiver = pc.addTransceiver(videoTrack, { direction: "sendrecv", streams: [state.stream] });
    if (config.prefer_h264) preferH264(videoTransceiver);
    for (const track of state.stream.getAudioTracks()) {
      pc.addTransceiver(track, { direction: "sendrecv", streams: [state.stream] });
    }
    const channel = pc.createDataChannel("control");
    state.channel = channel;
    channel.onmessage = (event) => onMessage(event.data);

    try {
      await pc.setLocalDescription(await pc.createOffer());
      await waitForIceGathering(pc);
    } catch (err) {
      fail(`The browser could not prepare the connection (${err.message}).`);
      return;
    }
    if (state.pc !== pc) return; // stopped meanwhile

    const ws = new WebSocket(wsUrl());
    state.ws = ws;
    ws.onopen = () => {
      ws.send(JSON.stringify({
        type: "offer",
        sdp: pc.localDescription.sdp,
        sdp_type: pc.localDescription.type,
        reference_b64: state.reference.b64,
        api_key: ui.apiKey.value.trim() || null,
        options: options(),
      }));
      setStatus("Waiting for the server's answer…");
    };
    ws.onmessage = (event) => { state.lastMessageAt = performance.now(); onMessage(event.data); };
    ws.onerror = () => { /* the close event follows with the code */ };
    ws.onclose = (event) => onSocketClosed(ws, event);
    state.timers.push(setTimeout(() => {
      if (state.phase === "connecting" && state.pc === pc) {
        fail("Connection failed: the server did not answer in time. Please try again.");
      }
    }, CONNECT_TIMEOUT_MS));
  }

  function onSocketClosed(ws, event) {
    if (state.ws !== ws) return;
    state.ws = null;
    if (state.phase !== "connecting" && state.phase !== "live") return;
    if (state.refusal) {
      fail(state.refusal);
    } else if (event.code === 1013 && state.phase === "connecting") {
      retryWhenFull(hintFromReason(event.reason));
    } else if ((event.code === 1001 || event.code === 1012 || state.goingAway) && state.phase === "live" &&
               state.moves < MAX_RECONNECTS * 4) {
      moveNow();
    } else if (CLOSE_CODES[event.code]) {
      fail(describeRefusal(CLOSE_CODES[event.code], event.reason));
    } else if (state.phase === "connecting") {
      fail(`Connection failed: the server closed the connection (code ${event.code}${event.reason ? ": " + event.reason : ""}).`);
    } else if (event.code !== 1000 && state.reconnects < MAX_RECONNECTS) {
      reconnectSoon(`the connection to the server was lost${event.reason ? " (" + event.reason + ")" : ""}`);
    } else {
      fail(`The session ended: the server closed the connection${event.reason ? " (" + event.reason + ")" : ""}.`);
    }
  }

  function retryWhenFull(hintS) {
    teardown();
    if (state.fullRetries >= MAX_FULL_RETRIES) {
      fail(describeRefusal("server_full", ""));
      return;
    }
    const delay = retryDelayMs(state.fullRetries, hintS);
    state.fullRetries += 1;
    setPhase("connecting");
    logEvent(`server full, retry ${state.fullRetries} in ${(delay / 1000).toFixed(1)} s`);
    const until = performance.now() + delay;
    const tick = () => {
      const left = Math.max(0, Math.ceil((until - performance.now()) / 1000));
      setStatus(`Server full, retrying in ${left} s\u2026`);
    };
    tick();
    const countdown = setInterval(tick, 250);
    state.reconnectTimer = setTimeout(() => {
      clearInterval(countdown);
      state.reconnectTimer = null;
      if (state.phase === "connecting") start();
    }, delay);
    state.timers.push(countdown);
  }

  function moveNow() {
    // The server is going away (scale-down, redeploy) and said so: another replica takes the
    // session at once; the person does nothing.
    teardown();
    state.moves += 1;
    state.goingAway = false;
    setPhase("connecting");
    setStatus("The server is moving this session, reconnecting\u2026");
    logEvent("the server is moving this session to another replica");
    state.reconnectTimer = setTimeout(() => { state.reconnectTimer = null; start(); }, Math.random() * 200);
  }

  function reconnectSoon(why) {
    // End the peer connection now: never sit on a frozen picture from a server that is gone.
    teardown();
    state.reconnects += 1;
    const delay = Math.min(8000, 1000 * 2 ** (state.reconnects - 1));
    setPhase("connecting");
    setStatus(`Reconnecting in ${Math.round(delay / 1000)} s: ${why}…`);
    logEvent(`reconnecting (${why})`);
    state.reconnectTimer = setTimeout(() => { state.reconnectTimer = null; start(); }, delay);
  }

  function watchSilence() {
    if (state.phase !== "live" || !state.ws) return;
    if (performance.now() - state.lastMessageAt > SILENCE_TIMEOUT_MS) {
      const ws = state.ws;
      state.ws = null;
      try { ws.close(4000, "no word from the server"); } catch (err) { /* already closed */ }
      if (state.reconnects < MAX_RECONNECTS) {
        reconnectSoon("no word from the server for 5 s");
      } else {
        fail("The session ended: no word from the server for 5 s.");
      }
    }
  }

  async function onMessage(raw) {
    let message;
    try {
      message = JSON.parse(raw);
    } catch (err) {
      return;
    }
    switch (message.type) {
      case "answer":
        if (!state.pc) return;
        state.sessionId = message.session_id || null;
        if (message.note) showNotice(message.note);
        if (message.synthetic) {
          state.synthetic = true;
          logEvent("the server marks the returned media as synthetic (AI-modified)");
        }
        try {
          await state.pc.setRemoteDescription({ type: "answer", sdp: message.sdp });
        } catch (err) {
          fail(`Connection failed: the server's answer could not be used (${err.message}).`);
          return;
        }
        setStatus("Answer received, connecting the video…");
        logEvent(`session ${state.sessionId || "?"} answered`);
        break;
      case "error":
        onServerError(message);
        break;
      case "stats":
        state.serverStats = message;
        renderOverlay();
        break;
      case "event":
        if (message.event === "server_shutdown") state.goingAway = true;
        logEvent(message.message || message.event);
        break;
      case "ack": {
        const label = state.pending.get(message.id);
        state.pending.delete(message.id);
        state.acks.push(message);
        ui.controlStatus.className = "field-status good";
        ui.controlStatus.textContent = `${label || "Change"} applied.${message.note ? " " + message.note : ""}`;
        break;
      }
      default:
        break;
    }
  }

  function onServerError(message) {
    const text = describeRefusal(message.code, message.message);
    if (message.id !== undefined && message.id !== null && state.pending.has(message.id)) {
      const label = state.pending.get(message.id);
      state.pending.delete(message.id);
      ui.controlStatus.className = "field-status bad";
      ui.controlStatus.textContent = `${label} was refused: ${text}`;
      state.errors.push(text);
      return;
    }
    if (state.phase === "connecting" && message.code === "server_full") {
      retryWhenFull(typeof message.retry_after_s === "number" ? message.retry_after_s : null);
      return;
    }
    if (state.phase === "connecting") {
      state.refusal = text; // the close that follows ends the attempt with this sentence
      fail(text);
      return;
    }
    state.errors.push(text);
    ui.controlStatus.className = "field-status bad";
    ui.controlStatus.textContent = text;
  }

  function goLive() {
    frameCount = 0;
    frameWindowStart = performance.now();
    setPhase("live");
    setStatus("Live.");
    state.reconnects = 0;
    state.fullRetries = 0;
    state.lastMessageAt = performance.now();
    state.timers.push(setInterval(pollStats, 1000));
    state.timers.push(setInterval(watchSilence, 1000));
    const voice = voiceOptions();
    if (voice.voice !== state.defaultVoice || Object.keys(voice).length > 1) {
      state.voice = voice;
      sendControl({ type: "set_options", ...voice }, "Voice");
    }
  }

  function sendControl(message, label) {
    const id = state.nextId++;
    const payload = JSON.stringify({ ...message, id });
    state.pending.set(id, label);
    ui.controlStatus.className = "field-status";
    ui.controlStatus.textContent = `${label}: sending…`;
    const channel = state.channel;
    const limit = state.pc && state.pc.sctp ? state.pc.sctp.maxMessageSize : 65536;
    // Large messages (a new photo) go over the WebSocket: data channel messages have a size limit.
    if (channel && channel.readyState === "open" && payload.length <= limit) {
      channel.send(payload);
    } else if (state.ws && state.ws.readyState === WebSocket.OPEN) {
      state.ws.send(payload);
    } else {
      state.pending.delete(id);
      ui.controlStatus.className = "field-status bad";
      ui.controlStatus.textContent = `${label} could not be sent: the session is not connected.`;
    }
  }

  function onOptionChanged(label) {
    if (state.phase !== "live") return; // sent with the next offer
    const opts = options();
    sendControl({ type: "set_options", ...opts }, label);
  }

  // ------------------------------------------------------------------ measurements

  let frameCount = 0;
  let frameWindowStart = performance.now();

  function watchRemoteVideo() {
    const video = ui.remote;
    if (typeof video.requestVideoFrameCallback === "function") {
      const onFrame = () => {
        frameCount += 1;
        if (state.pc) video.requestVideoFrameCallback(onFrame);
      };
      video.requestVideoFrameCallback(onFrame);
    }
  }

  async function pollStats() {
    const pc = state.pc;
    if (!pc) return;
    const now = performance.now();
    let statsFps = null;
    let jitterMs = null;
    let rttMs = null;
    try {
      const report = await pc.getStats();
      report.forEach((entry) => {
        if (entry.type === "inbound-rtp" && entry.kind === "video") {
          if (typeof entry.framesPerSecond === "number") statsFps = entry.framesPerSecond;
          if (entry.jitterBufferEmittedCount) jitterMs = (1000 * entry.jitterBufferDelay) / entry.jitterBufferEmittedCount;
        }
        if (entry.type === "candidate-pair" && entry.nominated && typeof entry.currentRoundTripTime === "number") {
          rttMs = entry.currentRoundTripTime * 1000;
        }
      });
    } catch (err) { /* stats are best effort */ }
    const elapsed = (now - frameWindowStart) / 1000;
    if (typeof ui.remote.requestVideoFrameCallback === "function" && elapsed > 0) {
      state.fps = frameCount / elapsed;
    } else if (statsFps !== null) {
      state.fps = statsFps;
    }
    frameCount = 0;
    frameWindowStart = now;
    state.rttMs = rttMs;
    // Estimate: server processing + network round trip + the browser's jitter buffer.
    const server = state.serverStats && typeof state.serverStats.latency_ms === "number" ? state.serverStats.latency_ms : null;
    state.latencyMs = server === null ? null : server + (rttMs || 0) + (jitterMs || 0);
    renderOverlay();
  }

  function renderOverlay() {
    ui.ovFps.textContent = `${state.fps.toFixed(1)} fps`;
    ui.ovLatency.textContent = state.latencyMs === null ? "latency –" : `latency ≈ ${Math.round(state.latencyMs)} ms`;
    const faces = state.serverStats ? state.serverStats.faces : null;
    ui.ovFaces.textContent = `faces ${faces === null || faces === undefined ? "–" : faces}`;
    ui.ovState.textContent = state.serverStats && state.serverStats.state ? state.serverStats.state : state.phase;
  }

  // ------------------------------------------------------------------ teardown

  function teardown() {
    for (const timer of state.timers) { clearTimeout(timer); clearInterval(timer); }
    state.timers = [];
    if (state.ws) {
      const ws = state.ws;
      state.ws = null;
      try { ws.close(1000, "client stopped"); } catch (err) { /* already closed */ }
    }
    if (state.pc) {
      try { state.pc.close(); } catch (err) { /* already closed */ }
      state.pc = null;
    }
    state.channel = null;
    if (state.stream) {
      for (const track of state.stream.getTracks()) track.stop();
      state.stream = null;
    }
    ui.local.srcObject = null;
    ui.remote.srcObject = null;
    state.pending.clear();
    state.serverStats = null;
    state.fps = 0;
    state.latencyMs = null;
    renderOverlay();
  }

  function fail(text) {
    teardown();
    showError(text);
    setPhase("error");
    setStatus("Stopped.");
    // From "error" one can start again.
    ui.start.disabled = !state.reference || !state.consent;
  }

  function stop() {
    if (state.reconnectTimer) { clearTimeout(state.reconnectTimer); state.reconnectTimer = null; }
    state.reconnects = 0;
    state.fullRetries = 0;
    state.moves = 0;
    state.goingAway = false;
    teardown();
    setPhase("idle");
    setStatus("Stopped. Press Start to go live again.");
  }

  // ------------------------------------------------------------------ consent and licences
  // The person confirms once, before the first session, that they may use the face in the
  // photo. The answer lives in this browser's localStorage only: it is never sent to the server.
  const CONSENT_KEY = "mirage.consent.v1";
  const CONSENT_TEXT = "Before your first session: confirm that you have the right to use the face in the photo " +
    "you upload (it is your own face, or its owner agreed), and that you will tell the people who see the video " +
    "that it is synthetic. Mirage returns AI-modified video; every swapped frame carries an \u201cAI-modified\u201d badge.";

  function readConsent() {
    try { return Boolean(window.localStorage.getItem(CONSENT_KEY)); } catch (err) { return false; }
  }

  function buildConsent() {
    const box = document.createElement("div");
    box.id = "consent";
    box.className = "banner consent";
    box.setAttribute("role", "dialog");
    box.setAttribute("aria-labelledby", "consent-text");
    const text = document.createElement("p");
    text.id = "consent-text";
    text.textContent = CONSENT_TEXT;
    const accept = document.createElement("button");
    accept.id = "consent-accept";
    accept.type = "button";
    accept.textContent = "I confirm I have the right to use this face";
    accept.addEventListener("click", () => {
      try { window.localStorage.setItem(CONSENT_KEY, new Date().toISOString()); } catch (err) { /* private mode: this page only */ }
      state.consent = true;
      box.hidden = true;
      logEvent("consent confirmed (remembered in this browser only)");
      setPhase(state.phase);
    });
    box.append(text, accept);
    ui.start.parentElement.before(box);
    ui.consent = box;
    state.consent = readConsent();
    box.hidden = state.consent;
  }

  function renderLicences() {
    if (!ui.licences) {
      ui.licences = document.createElement("p");
      ui.licences.id = "licences";
      ui.licences.className = "hint licences";
      ui.swapper.after(ui.licences);
    }
    const config = state.config || {};
    const rows = (config.licences && config.licences[ui.swapper.value]) || [];
    const parts = rows.map((row) => `${row.title} (${row.model}): ${row.licence}` +
      (row.commercial_use ? "" : " \u2014 non-commercial use only"));
    ui.licences.textContent = rows.length
      ? `Models in use for ${ui.swapper.value}: ${parts.join("; ")}.`
      : `Models in use for ${ui.swapper.value}: see /debug/models for their licences.`;
  }

  async function sessionIceServers() {
    // TURN credentials go only to an authenticated caller: ask /config again with the key.
    const base = (state.config && state.config.ice_servers) || [];
    const key = ui.apiKey.value.trim();
    if (!state.config || !state.config.require_api_key || !key) return base;
    try {
      const response = await fetch(new URL("config", document.baseURI),
        { cache: "no-store", headers: { "X-API-Key": key } });
      if (!response.ok) return base;
      const config = await response.json();
      return Array.isArray(config.ice_servers) ? config.ice_servers : base;
    } catch (err) {
      return base;
    }
  }

  buildConsent();

  // ------------------------------------------------------------------ wiring

  ui.reference.addEventListener("change", onReferenceChosen);
  ui.start.addEventListener("click", start);
  ui.stop.addEventListener("click", stop);
  ui.swapper.addEventListener("change", () => { renderLicences(); onOptionChanged("Swapper"); });
  ui.maxFaces.addEventListener("change", () => onOptionChanged("Faces to swap"));
  ui.fallback.addEventListener("change", () => onOptionChanged("Fallback"));
  ui.mouthMask.addEventListener("change", () => onOptionChanged("Mouth mask"));
  ui.enhancer.addEventListener("change", () => onOptionChanged("Face enhancer"));
  ui.voice.addEventListener("change", onVoiceChanged);
  ui.voicePitch.addEventListener("change", onVoiceChanged);
  ui.voiceFormant.addEventListener("change", onVoiceChanged);
  ui.hearAudio.addEventListener("change", () => { ui.remote.muted = !ui.hearAudio.checked; });
  window.addEventListener("pagehide", teardown);

  loadConfig().then((config) => {
    applyConfig(config);
    setPhase("idle");
    setStatus(state.reference ? "Ready: press Start." : "Choose a reference photo, then press Start.");
  }).catch((err) => {
    setPhase("error");
    ui.start.disabled = true;
    showError(err.message);
    setStatus("Not connected to a server.");
  });
})();
