// Prints @bsv/sdk StorageUtils.getURLForFile for each hex input read as a JSON list on stdin (used by test_uhrp.py).
const { StorageUtils } = require(process.argv[2]);
const inputs = JSON.parse(require('fs').readFileSync(0, 'utf8'));
const out = inputs.map(hex => StorageUtils.getURLForFile(Array.from(Buffer.from(hex, 'hex'))));
console.log(JSON.stringify(out));
