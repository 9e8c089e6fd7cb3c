// The official TypeScript SDK's view of SHIP/SLAP/UHRP tokens, PushDrop scripts and URLs (used by
// test_topic_ship.py, test_topic_uhrp.py and test_pushdrop.py). Reads one JSON object on stdin, each key a list of
// jobs, and prints one JSON object with a list of answers per key:
//   decode: [scriptHex]                    -> PushDrop.decode: {key, fields: [hex]} or {error}
//   admin:  [scriptHex]                    -> OverlayAdminTokenTemplate.decode: {protocol, identityKey, ...} or {error}
//   linked: [{script, protocol, identityField}] -> the reference linkage check with ProtoWallet('anyone'), the
//                                          identity key being field identityField (SHIP/SLAP 1, UHRP 0): bool
//   lock:   [{key, fields, protocol}]      -> PushDrop(ProtoWallet(key)).lock(fields, protocol, '1', 'anyone', true, true)
//   uris:   [string]                       -> the reference advertisable-URI rules on WHATWG URL parsing: bool
//   urls:   [string]                       -> new URL(s): {protocol, hostname, pathname} or null
//   utf8:   [hex]                          -> Utils.toUTF8
const sdk = require(process.argv[2]);
const { PushDrop, OverlayAdminTokenTemplate, ProtoWallet, PrivateKey, LockingScript, Utils } = sdk;

const bytes = (hex) => Array.from(Buffer.from(hex, 'hex'));
const hex = (arr) => Buffer.from(arr).toString('hex');

function decode(scriptHex) {
  try {
    const { lockingPublicKey, fields } = PushDrop.decode(LockingScript.fromHex(scriptHex));
    return { key: lockingPublicKey.toString(), fields: fields.map(hex) };
  } catch (e) {
    return { error: String(e && e.message) };
  }
}

function admin(scriptHex) {
  try {
    return OverlayAdminTokenTemplate.decode(LockingScript.fromHex(scriptHex));
  } catch (e) {
    return { error: String(e && e.message) };
  }
}

// isTokenSignatureCorrectlyLinked, awaited: the signature (the last field) over the other fields verifies for the
// claimed identity key, and the locking key is the child key 'anyone' derives for it.
async function linked({ script, protocol, identityField }) {
  let decoded;
  try {
    decoded = PushDrop.decode(LockingScript.fromHex(script));
  } catch (e) {
    return false;
  }
  const fields = decoded.fields.slice();
  const signature = fields.pop();
  const identityKey = Utils.toHex(fields[identityField]);
  const data = [].concat(...fields);
  const anyone = new ProtoWallet('anyone');
  try {
    const { valid } = await anyone.verifySignature({ data, signature, counterparty: identityKey, protocolID: protocol, keyID: '1' });
    if (!valid) return false;
    const { publicKey } = await anyone.getPublicKey({ counterparty: identityKey, protocolID: protocol, keyID: '1' });
    return publicKey === decoded.lockingPublicKey.toString();
  } catch (e) {
    return false;
  }
}

async function lock({ key, fields, protocol }) {
  const wallet = new ProtoWallet(PrivateKey.fromHex(key));
  const script = await new PushDrop(wallet).lock(fields.map(bytes), protocol, '1', 'anyone', true, true);
  return script.toHex();
}

function parse(url) {
  try {
    return new URL(url);
  } catch (e) {
    return null;
  }
}

// The reference rules, written out: https-like schemes need a host other than localhost and no path; wss needs a
// host other than localhost; js8c needs lat/long in range and positive freq/radius.
function advertisable(uri) {
  if (typeof uri !== 'string' || uri.trim() === '') return false;
  const httpsLike = ['https://', 'https+bsvauth://', 'https+bsvauth+smf://', 'https+bsvauth+scrypt-offchain://', 'https+rtt://'];
  for (const prefix of httpsLike) {
    if (uri.startsWith(prefix)) {
      const url = parse('https://' + uri.slice(prefix.length));
      return url !== null && url.hostname.toLowerCase() !== 'localhost' && url.pathname === '/';
    }
  }
  if (uri.startsWith('wss://')) {
    const url = parse(uri);
    return url !== null && url.protocol === 'wss:' && url.hostname.toLowerCase() !== 'localhost';
  }
  if (uri.startsWith('js8c+bsvauth+smf:')) {
    const at = uri.indexOf('?');
    if (at < 0) return false;
    const params = new URLSearchParams(uri.slice(at));
    const [lat, lon, freq, radius] = ['lat', 'long', 'freq', 'radius'].map((k) => params.get(k));
    if (!lat || !lon || !freq || !radius) return false;
    const la = parseFloat(lat);
    const lo = parseFloat(lon);
    if (Number.isNaN(la) || la < -90 || la > 90 || Number.isNaN(lo) || lo < -180 || lo > 180) return false;
    for (const text of [freq, radius]) {
      const m = text.match(/(\d+(\.\d+)?)/);
      if (!m || !(parseFloat(m[1]) > 0)) return false;
    }
    return true;
  }
  return false;
}

function url(text) {
  const u = parse(text);
  return u === null ? null : { protocol: u.protocol, hostname: u.hostname, pathname: u.pathname };
}

(async () => {
  const jobs = JSON.parse(require('fs').readFileSync(0, 'utf8'));
  const out = {};
  out.decode = (jobs.decode || []).map(decode);
  out.admin = (jobs.admin || []).map(admin);
  out.linked = [];
  for (const job of jobs.linked || []) out.linked.push(await linked(job));
  out.lock = [];
  for (const job of jobs.lock || []) out.lock.push(await lock(job));
  out.uris = (jobs.uris || []).map(advertisable);
  out.urls = (jobs.urls || []).map(url);
  out.utf8 = (jobs.utf8 || []).map((h) => Utils.toUTF8(bytes(h)));
  process.stdout.write(JSON.stringify(out));
})().catch((e) => {
  console.error(e);
  process.exit(1);
});
