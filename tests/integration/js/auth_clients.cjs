// The official @bsv/sdk AuthFetch (BRC-104, and its BRC-105 402 handling) against our nodes (used by
// tests/integration/test_http_auth.py).
// argv: SDK path. stdin: JSON {key (hex), calls: [{url, method?, headers?, body?, as?}], replays: bool, coin?: {...}}.
// stdout: one JSON object: each call's {status, headers, bodyHex} (or {error}), and with `replays` what the server
// answered to the first authenticated request sent again as it was, with its signature altered, and with another
// identity key. TLS: the test sets NODE_EXTRA_CA_CERTS to its local CA.
// record what AuthFetch sends: its transport binds the global fetch when the SDK loads, so wrap it first
const sent = [];
const realFetch = globalThis.fetch.bind(globalThis);
globalThis.fetch = async (url, init = {}) => {
  sent.push({ url: String(url), method: init.method, headers: { ...(init.headers || {}) }, body: init.body });
  return realFetch(url, init);
};
const sdk = require(process.argv[2]);
const { AuthFetch, ProtoWallet, PrivateKey, Transaction, P2PKH, LockingScript, SatoshisPerKilobyte } = sdk;

// AuthFetch logs its payment attempts with console.info/warn: keep stdout for the result
const toStderr = (...args) => process.stderr.write(args.map(a => typeof a === 'string' ? a : JSON.stringify(a)).join(' ') + '\n');
console.log = console.info = console.warn = console.error = toStderr;

const bytes = h => Array.from(Buffer.from(h, 'hex'));

// a ProtoWallet that can pay: createAction spends one P2PKH coin (its BEEF from the devnet faucet) to the outputs
// asked for, the change back to the coin's key
class PayingWallet extends ProtoWallet {
  constructor (key, coin) {
    super(key);
    this.coin = coin;
  }

  async createAction (args) {
    if (this.coin == null) throw new Error('this wallet has no coin');
    const coin = this.coin;
    this.coin = null;
    const payKey = PrivateKey.fromHex(coin.key);
    const source = Transaction.fromBEEF(bytes(coin.beef), coin.txid);
    const tx = new Transaction();
    tx.addInput({ sourceTransaction: source, sourceOutputIndex: coin.vout, unlockingScriptTemplate: new P2PKH().unlock(payKey) });
    for (const o of args.outputs) tx.addOutput({ lockingScript: LockingScript.fromHex(o.lockingScript), satoshis: o.satoshis });
    tx.addOutput({ lockingScript: new P2PKH().lock(payKey.toPublicKey().toAddress()), change: true });
    await tx.fee(new SatoshisPerKilobyte(100));
    await tx.sign();
    this.paid = { txid: tx.id('hex'), outputs: tx.outputs.length };
    return { txid: tx.id('hex'), tx: tx.toAtomicBEEF() };
  }
}

(async () => {
  const input = JSON.parse(require('fs').readFileSync(0, 'utf8'));
  const wallet = new PayingWallet(PrivateKey.fromHex(input.key), input.coin);
  // `as: "other"`: a second client, with an identity of its own
  const clients = { main: new AuthFetch(wallet), other: new AuthFetch(new ProtoWallet(PrivateKey.fromRandom())) };
  const result = { calls: [] };
  for (const call of input.calls) {
    try {
      const response = await clients[call.as || 'main'].fetch(call.url, { method: call.method || 'GET', headers: call.headers || {}, body: call.body });
      const headers = {};
      response.headers.forEach((v, k) => { headers[k] = v });
      result.calls.push({ status: response.status, headers, bodyHex: Buffer.from(await response.arrayBuffer()).toString('hex') });
    } catch (e) {
      result.calls.push({ error: String(e && e.message ? e.message : e) });
    }
  }
  result.paid = wallet.paid || null;
  result.sent = sent.map(s => ({ url: s.url, method: s.method, auth: s.headers['x-bsv-auth-request-id'] != null }));
  if (input.replays) {
    const first = sent.find(s => s.headers['x-bsv-auth-request-id'] != null);
    const answer = async (headers) => {
      const r = await realFetch(first.url, { method: first.method, headers, body: first.body });
      const got = {};
      r.headers.forEach((v, k) => { got[k] = v });
      return { status: r.status, headers: got, body: await r.text() };
    };
    const sig = first.headers['x-bsv-auth-signature'];
    const flipped = sig.slice(0, 20) + (sig[20] === '0' ? '1' : '0') + sig.slice(21);
    const other = PrivateKey.fromRandom().toPublicKey().toString();
    result.replayed = await answer(first.headers);
    result.tampered = await answer({ ...first.headers, 'x-bsv-auth-signature': flipped });
    result.otherIdentity = await answer({ ...first.headers, 'x-bsv-auth-identity-key': other });
  }
  process.stdout.write(JSON.stringify(result) + '\n');
})().catch(e => { process.stderr.write((e && e.stack ? e.stack : String(e)) + '\n'); process.exit(1); });
