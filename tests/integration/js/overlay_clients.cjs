// The official @bsv/sdk overlay clients against our nodes (used by tests/integration/test_official_clients.py).
// argv: SDK path. stdin: JSON {tracker, topic, service, beef (hex), uhrpUrl}. stdout: one JSON object of findings.
// TLS: the test sets NODE_EXTRA_CA_CERTS to its local CA, so fetch trusts the nodes' https:// certificates.
const sdk = require(process.argv[2]);
const { LookupResolver, TopicBroadcaster, StorageDownloader, Transaction, PushDrop, Utils } = sdk;

function decode (output) {
  const tx = Transaction.fromBEEF(output.beef);
  const { fields, lockingPublicKey } = PushDrop.decode(tx.outputs[output.outputIndex].lockingScript);
  return { tx, fields: fields.map(f => Utils.toHex(f)), lockingKey: lockingPublicKey.toString() };
}

async function answers (resolver, question) {
  const answer = await resolver.query(question);
  const out = [];
  for (const output of answer.outputs) {
    const { tx, fields, lockingKey } = decode(output);
    out.push({ txid: tx.id('hex'), outputIndex: output.outputIndex, verified: await tx.verify('scripts only'), fields, lockingKey });
  }
  return { type: answer.type, outputs: out };
}

(async () => {
  const input = JSON.parse(require('fs').readFileSync(0, 'utf8'));
  const tracker = input.tracker;
  // host overrides for ls_ship and ls_uhrp; ls_slap always goes to the SLAP trackers
  const resolver = new LookupResolver({
    networkPreset: 'mainnet',
    slapTrackers: [tracker],
    hostOverrides: { ls_ship: [tracker], ls_uhrp: [tracker] }
  });
  const result = {};
  result.ship = await answers(resolver, { service: 'ls_ship', query: { topics: [input.topic] } });
  result.slap = await answers(resolver, { service: 'ls_slap', query: { service: input.service } });
  result.uhrp = await answers(resolver, { service: 'ls_uhrp', query: { uhrpUrl: input.uhrpUrl } });

  // the broadcaster finds the hosts of the topic through their SHIP tokens (ls_ship on the tracker) and submits
  const broadcaster = new TopicBroadcaster([input.topic], { networkPreset: 'mainnet', resolver });
  const tx = Transaction.fromBEEF(Array.from(Buffer.from(input.beef, 'hex')));
  result.broadcast = await broadcaster.broadcast(tx);

  // the downloader resolves the UHRP URL through ls_uhrp and fetches the bytes from our gateway, checking the hash;
  // its own resolver only takes a network preset, so it is given one pointed at the tracker
  const downloader = new StorageDownloader({ networkPreset: 'mainnet' });
  downloader.lookupResolver = resolver;
  result.resolved = await downloader.resolve(input.uhrpUrl);
  const download = await downloader.download(input.uhrpUrl);
  result.download = { hex: Buffer.from(download.data).toString('hex'), mimeType: download.mimeType };
  console.log(JSON.stringify(result));
})().catch(e => { console.error(e && e.stack ? e.stack : String(e)); process.exit(1); });
