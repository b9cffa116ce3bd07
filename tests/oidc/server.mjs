// A real OAuth 2.0 / OpenID Connect authorization server (oidc-provider) on
// 127.0.0.1, for tests/interop_oidc_provider.rs. Test use only.
//
//   node tests/oidc/server.mjs [--port N] [--exit-with-stdin]
//
// Port: `--port N`, else $OIDC_PORT, else 0 (the OS picks one). Once listening
// it prints exactly one line `READY <port>` on stdout. The issuer is
// `http://127.0.0.1:<port>`; discovery at /.well-known/openid-configuration,
// keys at /jwks, tokens at /token. Nothing but 127.0.0.1 is used.
// Exits on SIGTERM or SIGINT, and with `--exit-with-stdin` also when its
// standard input closes (so a test that dies without cleaning up takes its
// server with it).
//
// Client (client_credentials only, client_secret_basic or client_secret_post):
//   client_id `orders-client`, client_secret `orders-client-secret`
//   (a fixed test credential: never printed, never logged).
// Resources (RFC 8707 `resource=`): each gives a JWT access token
// (`typ: at+jwt`) whose `aud` is the resource, holding the requested scopes
// that the resource defines:
//   urn:orders-api   ES256  scopes: orders:read orders:write
//   urn:reports-api  RS256  scopes: reports:read
//   urn:billing-api  ES256  scopes: billing:read
// Any other resource is refused (invalid_target). A token request without
// `resource` gets an opaque (non-JWT) access token.
//
// Key rotation, test-only endpoints on the same port (outside the OIDC paths):
//   POST /__test/rotate  generate a new EC P-256 and a new RSA key, put them in
//                        front of the published set (older keys stay
//                        published, as in a real rotation) and swap in a new
//                        Provider with the same issuer, clients and resources.
//                        When it answers, new tokens are signed by the new
//                        keys. Answer: {"kids": [...published kids, newest first]}
//   GET  /__test/stats   {"discovery": n, "jwks": n, "rotations": n,
//                        "introspection": n, "kids": [...]}: how often the
//                        discovery document, the key set and introspection
//                        (/token/introspection, RFC 7662) were served (so a test can tell that its
//                        gateway really used them, without fetching them
//                        itself), and the published kids, newest first.
// Restarting the Provider object (not the process) keeps the port and issuer,
// needs no signal handling on the test side and answers only once the new keys
// are live, so a test never races the rotation.

import { generateKeyPairSync, randomBytes, randomUUID } from 'node:crypto';
import { createServer } from 'node:http';

import Provider, { errors } from 'oidc-provider';

const CLIENT = {
  client_id: 'orders-client',
  client_secret: 'orders-client-secret',
  grant_types: ['client_credentials'],
  response_types: [],
  redirect_uris: [],
  token_endpoint_auth_method: 'client_secret_basic',
};

const RESOURCES = {
  'urn:orders-api': { scope: 'orders:read orders:write', alg: 'ES256' },
  'urn:reports-api': { scope: 'reports:read', alg: 'RS256' },
  'urn:billing-api': { scope: 'billing:read', alg: 'ES256' },
};

const TOKEN_TTL = 300; // seconds

function parsePort() {
  const args = process.argv.slice(2);
  const i = args.indexOf('--port');
  const raw = i >= 0 ? args[i + 1] : (process.env.OIDC_PORT ?? '0');
  const port = Number(raw);
  if (!Number.isInteger(port) || port < 0 || port > 65535) {
    console.error(`server.mjs: bad port ${JSON.stringify(raw)}`);
    process.exit(2);
  }
  return port;
}

// A private signing JWK (node:crypto, no extra dependency) with a fresh kid.
function signingKey(alg) {
  const { privateKey } = alg === 'ES256'
    ? generateKeyPairSync('ec', { namedCurve: 'P-256' })
    : generateKeyPairSync('rsa', { modulusLength: 2048 });
  const prefix = alg === 'ES256' ? 'ec' : 'rsa';
  return {
    ...privateKey.export({ format: 'jwk' }),
    kid: `${prefix}-${randomUUID()}`,
    alg,
    use: 'sig',
  };
}

function newKeys() {
  return [signingKey('ES256'), signingKey('RS256')];
}

function makeProvider(issuer, keys) {
  const provider = new Provider(issuer, {
    clients: [CLIENT],
    jwks: { keys },
    cookies: { keys: [randomBytes(32).toString('base64url')] },
    features: {
      devInteractions: { enabled: false },
      clientCredentials: { enabled: true },
      // RFC 7662 at /token/introspection, for tests/introspection.rs.
      introspection: { enabled: true },
      revocation: { enabled: true },
      resourceIndicators: {
        enabled: true,
        defaultResource: async () => undefined,
        useGrantedResource: async () => false,
        getResourceServerInfo: async (ctx, resource) => {
          const rs = RESOURCES[resource];
          if (!rs) throw new errors.InvalidTarget();
          return {
            scope: rs.scope,
            audience: resource,
            accessTokenTTL: TOKEN_TTL,
            accessTokenFormat: 'jwt',
            jwt: { sign: { alg: rs.alg } },
          };
        },
      },
    },
    ttl: {
      ClientCredentials: TOKEN_TTL,
      AccessToken: TOKEN_TTL,
      Grant: TOKEN_TTL,
      Interaction: TOKEN_TTL,
      Session: TOKEN_TTL,
    },
  });
  // oidc-provider's own server errors, without request data or tokens.
  provider.on('server_error', (_ctx, err) => console.error(`server_error: ${err.message}`));
  return provider;
}

const port = parsePort();
const stats = { discovery: 0, jwks: 0, rotations: 0, introspection: 0 };
let keys = newKeys();
let issuer;
let handle; // the current Provider's request handler

function json(res, status, body) {
  res.writeHead(status, { 'content-type': 'application/json', 'cache-control': 'no-store' });
  res.end(JSON.stringify(body));
}

const server = createServer((req, res) => {
  const path = (req.url ?? '/').split('?')[0];
  if (path === '/__test/rotate' && req.method === 'POST') {
    keys = [...newKeys(), ...keys];
    handle = makeProvider(issuer, keys).callback();
    stats.rotations += 1;
    json(res, 200, { kids: keys.map((k) => k.kid) });
    return;
  }
  if (path === '/__test/stats' && req.method === 'GET') {
    json(res, 200, { ...stats, kids: keys.map((k) => k.kid) });
    return;
  }
  if (path === '/.well-known/openid-configuration') stats.discovery += 1;
  if (path === '/jwks') stats.jwks += 1;
  if (path === '/token/introspection') stats.introspection += 1;
  if (!handle) {
    json(res, 503, { error: 'starting' });
    return;
  }
  handle(req, res);
});

server.listen(port, '127.0.0.1', () => {
  const chosen = server.address().port;
  issuer = `http://127.0.0.1:${chosen}`;
  handle = makeProvider(issuer, keys).callback();
  process.stdout.write(`READY ${chosen}\n`);
});

function stop() {
  server.close();
  process.exit(0);
}
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
if (process.argv.includes('--exit-with-stdin')) {
  process.stdin.on('end', stop);
  process.stdin.on('error', stop);
  process.stdin.resume();
}
