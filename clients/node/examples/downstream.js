// A downstream Express service that trusts authd's access tokens, using this kit.
//
//   AUTHD_URL=http://127.0.0.1:8080 AUTHD_REVOCATIONS_TOKEN=... node examples/downstream.js
//   curl -H "Authorization: Bearer $ACCESS_TOKEN" http://127.0.0.1:3000/me
//
// Variables: AUTHD_URL (default http://127.0.0.1:8080), AUTHD_ALG (EdDSA default,
// ES256, or HS256 with AUTHD_ACCESS_TOKEN_SECRET), AUTHD_REVOCATIONS_TOKEN
// (authd's REVOCATIONS_TOKEN; unset: no feed), AUTHD_AUDIENCE / AUTHD_ISSUER
// (default authd), PORT (default 3000).
import express from 'express';
import { Verifier } from '../src/index.js';

const env = process.env;
const alg = env.AUTHD_ALG ?? 'EdDSA';
const verifier = await Verifier.start({
  url: env.AUTHD_URL ?? 'http://127.0.0.1:8080',
  ...(alg === 'HS256' ? { secret: env.AUTHD_ACCESS_TOKEN_SECRET } : { algorithms: [alg] }),
  revocationsToken: env.AUTHD_REVOCATIONS_TOKEN,
  issuer: env.AUTHD_ISSUER,
  audience: env.AUTHD_AUDIENCE,
});

const app = express();
app.get('/health', (req, res) => res.send('ok'));
app.get('/me', verifier.middleware(), (req, res) => res.json(req.auth));
const server = app.listen(Number(env.PORT ?? 3000), '127.0.0.1', () => {
  console.log(`downstream listening on http://127.0.0.1:${server.address().port}`);
});
