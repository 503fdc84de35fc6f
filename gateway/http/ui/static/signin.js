// Sign in with the private key file: sign a one-time RFC 7523 client assertion in the
// browser (WebCrypto) and post only the assertion. The key never leaves the browser.
// Without JavaScript (or WebCrypto) the page still works: paste a token instead.
(function () {
  "use strict";
  var form = document.getElementById("signin-form");
  var section = document.getElementById("with-key");
  if (!form || !section || !window.crypto || !window.crypto.subtle || !window.FileReader) return;
  section.hidden = false;
  var msgs = document.getElementById("signin-messages").dataset;
  var clientField = document.getElementById("f-client_id");
  var fileField = document.getElementById("f-key_file");
  var fileError = document.getElementById("f-key_file-error");

  function b64url(bytes) {
    var s = "";
    for (var i = 0; i < bytes.length; i++) s += String.fromCharCode(bytes[i]);
    return btoa(s).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
  }
  function utf8(text) { return new TextEncoder().encode(text); }
  function pemToDer(pem) {
    var m = /-----BEGIN PRIVATE KEY-----([\s\S]+?)-----END PRIVATE KEY-----/.exec(pem);
    if (!m) throw new Error("not PKCS#8");
    var bin = atob(m[1].replace(/\s+/g, ""));
    var der = new Uint8Array(bin.length);
    for (var i = 0; i < bin.length; i++) der[i] = bin.charCodeAt(i);
    return der.buffer;
  }
  function showError(input, errorEl, text) {
    errorEl.textContent = text;
    errorEl.hidden = false;
    input.setAttribute("aria-invalid", "true");
    input.focus();
  }
  function clearError(input, errorEl) {
    errorEl.hidden = true;
    errorEl.textContent = "";
    input.removeAttribute("aria-invalid");
  }
  // Try the algorithms the gateway accepts (ES256, ES384, RS384) until the key imports.
  var CANDIDATES = [
    { alg: "ES256", imp: { name: "ECDSA", namedCurve: "P-256" }, sign: { name: "ECDSA", hash: "SHA-256" } },
    { alg: "ES384", imp: { name: "ECDSA", namedCurve: "P-384" }, sign: { name: "ECDSA", hash: "SHA-384" } },
    { alg: "RS384", imp: { name: "RSASSA-PKCS1-v1_5", hash: "SHA-384" }, sign: { name: "RSASSA-PKCS1-v1_5" } }
  ];
  async function importKey(der) {
    for (var i = 0; i < CANDIDATES.length; i++) {
      try {
        var key = await crypto.subtle.importKey("pkcs8", der, CANDIDATES[i].imp, false, ["sign"]);
        return { key: key, c: CANDIDATES[i] };
      } catch (e) { /* not this one */ }
    }
    throw new Error("unusable key");
  }
  async function assertion(clientId, pem) {
    var k = await importKey(pemToDer(pem));
    var now = Math.floor(Date.now() / 1000);
    var jti = b64url(crypto.getRandomValues(new Uint8Array(16)));
    var header = { alg: k.c.alg, typ: "JWT" };
    var claims = { iss: clientId, sub: clientId, aud: form.dataset.audience, iat: now, exp: now + 240, jti: jti };
    var input = b64url(utf8(JSON.stringify(header))) + "." + b64url(utf8(JSON.stringify(claims)));
    var sig = new Uint8Array(await crypto.subtle.sign(k.c.sign, k.key, utf8(input)));
    return input + "." + b64url(sig);
  }
  function readFile(file) {
    return new Promise(function (resolve, reject) {
      var r = new FileReader();
      r.onload = function () { resolve(String(r.result)); };
      r.onerror = function () { reject(r.error); };
      r.readAsText(file);
    });
  }
  document.getElementById("sign-with-key").addEventListener("click", async function () {
    var clientError = document.getElementById("f-client_id-error");
    if (!clientError) {
      clientError = document.createElement("p");
      clientError.className = "field-error";
      clientError.id = "f-client_id-error";
      clientField.parentNode.insertBefore(clientError, clientField);
      clientField.setAttribute("aria-describedby", clientError.id);
    }
    clearError(clientField, clientError);
    clearError(fileField, fileError);
    var clientId = clientField.value.trim();
    if (!clientId) { showError(clientField, clientError, msgs.needClient); return; }
    if (!fileField.files || !fileField.files.length) { showError(fileField, fileError, msgs.needKey); return; }
    try {
      var jwt = await assertion(clientId, await readFile(fileField.files[0]));
    } catch (e) {
      showError(fileField, fileError, msgs.badKey);
      return;
    }
    document.getElementById("f-credential").value = jwt;
    form.submit();
  });
})();
