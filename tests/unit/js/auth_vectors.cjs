// BRC-104/105 vectors from the official @bsv/sdk (used by tests/unit/test_http_auth.py).
// argv: SDK path. stdin: JSON {key, peer, requests: [...], responses: [...], nonces: [...], signatures: [...]}.
// stdout: one JSON object with the SDK's answers for each job.
const sdk = require(process.argv[2]);
const { AuthFetch, SimplifiedFetchTransport, ProtoWallet, PrivateKey, Utils, createNonce, verifyNonce } = sdk;

const hex = a => Buffer.from(a).toString('hex');
const bytes = h => Array.from(Buffer.from(h, 'hex'));

(async () => {
  const input = JSON.parse(require('fs').readFileSync(0, 'utf8'));
  const wallet = new ProtoWallet(PrivateKey.fromHex(input.key));
  const out = { requests: [], responses: [], nonces: [], signatures: [], verified: [] };

  // the request payload AuthFetch signs (its own serializer, called directly)
  const client = new AuthFetch(wallet);
  for (const r of input.requests) {
    const writer = await client.serializeRequest(r.method, r.headers, r.body === null ? undefined : r.body,
      new URL(r.url), bytes(r.requestId));
    out.requests.push(hex(writer.toArray()));
  }

  // the response payload AuthFetch checks: SimplifiedFetchTransport.send with a stub fetch answering the response
  for (const r of input.responses) {
    const fetchStub = async () => new Response(r.body === null ? null : Buffer.from(r.body, 'hex'),
      { status: r.status, headers: r.headers });
    const transport = new SimplifiedFetchTransport('https://example.test', fetchStub);
    let seen = null;
    await transport.onData(async m => { seen = m });
    const payload = Array.from(Buffer.alloc(32, 7));
    const general = { version: '0.1', messageType: 'general', identityKey: input.peer, nonce: 'x', yourNonce: 'y',
      signature: [1], payload: (() => { const w = new Utils.Writer(); w.write(payload); w.writeVarIntNum(3); w.write(Utils.toArray('GET')); w.writeVarIntNum(1); w.write(Utils.toArray('/')); w.writeVarIntNum(-1); w.writeVarIntNum(0); w.writeVarIntNum(-1); return w.toArray() })() };
    await transport.send(general);
    out.responses.push(hex(seen.payload));
  }

  // nonces: the SDK's createNonce (ASCII heads give the same key id in both encodings), and verifyNonce of ours
  for (const n of input.nonces) {
    const head = bytes(n.head);
    const { hmac } = await wallet.createHmac({ protocolID: [2, 'server hmac'], keyID: Utils.toUTF8(head), data: head,
      counterparty: n.counterparty });
    out.nonces.push({ sdk: Utils.toBase64([...head, ...hmac]), verifies: await verifyNonce(n.ours, wallet, n.counterparty).catch(() => false) });
  }
  out.sdkNonce = await createNonce(wallet);

  // BRC-3 signatures both ways
  for (const s of input.signatures) {
    const { signature } = await wallet.createSignature({ data: bytes(s.data), protocolID: [2, 'auth message signature'],
      keyID: s.keyID, counterparty: s.counterparty });
    out.signatures.push(hex(signature));
    const { valid } = await wallet.verifySignature({ data: bytes(s.data), signature: bytes(s.theirs),
      protocolID: [2, 'auth message signature'], keyID: s.keyID, counterparty: s.counterparty }).catch(() => ({ valid: false }));
    out.verified.push(valid);
  }
  console.log(JSON.stringify(out));
})().catch(e => { console.error(e && e.stack ? e.stack : String(e)); process.exit(1); });
