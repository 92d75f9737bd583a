// Peer server for the AgentIdP benchmark: node-oidc-provider (panva) issuing
// client_credentials access tokens in JWT format, in-memory storage (default adapter).
//
// Env / CLI contract (see README.md):
//   PORT          listen port (default 3100); issuer is http://127.0.0.1:<PORT>
//   HOST          bind address (default 127.0.0.1)
//   ALG           JWT access token signing alg: ES256 (default) | RS256 | EdDSA
//                 (also accepted as `--alg X` or as the first positional argument)
//   WORKERS       number of processes (default 1). >1 uses node:cluster; keys are
//                 generated once in the primary and handed to every worker.
//   CLIENTS_FILE  JSON array of {client_id, client_secret}
//   CLIENTS       alternative: "id1:secret1,id2:secret2"
//                 (neither given: one client client1:secret1)
//   NODE_ENV      forced to "production" unless set otherwise
// Prints exactly one line "ready <PORT>" on stdout once listening (from the primary,
// after every worker listens, when WORKERS>1). Exits 0 on SIGTERM/SIGINT.

import cluster from 'node:cluster';
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';

process.env.NODE_ENV ||= 'production';

const RESOURCE = 'urn:bench:api';
const SCOPE = 'api:read';
const ALGS = {
  ES256: () => crypto.generateKeyPairSync('ec', { namedCurve: 'P-256' }),
  RS256: () => crypto.generateKeyPairSync('rsa', { modulusLength: 2048 }),
  EdDSA: () => crypto.generateKeyPairSync('ed25519'),
};

function parseAlg() {
  const argv = process.argv.slice(2);
  let alg = process.env.ALG;
  const i = argv.indexOf('--alg');
  if (i !== -1 && argv[i + 1]) alg = argv[i + 1];
  else if (argv[0] && !argv[0].startsWith('-')) alg = argv[0];
  alg ||= 'ES256';
  if (!ALGS[alg]) {
    console.error(`unsupported ALG ${alg}; use one of ${Object.keys(ALGS).join(', ')}`);
    process.exit(2);
  }
  return alg;
}

function loadClients() {
  let list;
  if (process.env.CLIENTS_FILE) {
    list = JSON.parse(fs.readFileSync(process.env.CLIENTS_FILE, 'utf8'));
  } else if (process.env.CLIENTS) {
    list = process.env.CLIENTS.split(',').filter(Boolean).map((pair) => {
      const idx = pair.indexOf(':');
      return { client_id: pair.slice(0, idx), client_secret: pair.slice(idx + 1) };
    });
  } else {
    list = [{ client_id: 'client1', client_secret: 'secret1' }];
  }
  if (!Array.isArray(list) || !list.length) throw new Error('no clients configured');
  return list.map(({ client_id, client_secret }) => ({
    client_id: String(client_id),
    client_secret: String(client_secret),
    grant_types: ['client_credentials'],
    response_types: [],
    redirect_uris: [],
    token_endpoint_auth_method: 'client_secret_basic',
    scope: SCOPE,
  }));
}

// Key material shared by all processes: generated once (primary / single process)
// and passed to cluster workers via the PEER_SHARED env var.
function makeShared(alg) {
  const { privateKey } = ALGS[alg]();
  const jwk = privateKey.export({ format: 'jwk' });
  jwk.kid = crypto.randomBytes(8).toString('hex');
  jwk.alg = alg;
  jwk.use = 'sig';
  return { alg, jwk, cookieKeys: [crypto.randomBytes(32).toString('base64url')] };
}

async function startServer(shared, port, host) {
  const { default: Provider } = await import('oidc-provider');
  const { alg } = shared;

  const provider = new Provider(`http://127.0.0.1:${port}`, {
    clients: loadClients(),
    jwks: { keys: [shared.jwk] },
    cookies: { keys: shared.cookieKeys },
    scopes: [SCOPE],
    clientDefaults: {
      grant_types: ['client_credentials'],
      response_types: [],
      token_endpoint_auth_method: 'client_secret_basic',
      id_token_signed_response_alg: alg,
    },
    features: {
      devInteractions: { enabled: false },
      clientCredentials: { enabled: true },
      resourceIndicators: {
        enabled: true,
        defaultResource: () => RESOURCE,
        useGrantedResource: () => true,
        getResourceServerInfo: () => ({
          scope: SCOPE,
          audience: RESOURCE,
          accessTokenTTL: 900,
          accessTokenFormat: 'jwt',
          jwt: { sign: { alg } },
        }),
      },
    },
  });

  const server = provider.listen(port, host);
  await new Promise((resolve, reject) => {
    server.once('listening', resolve);
    server.once('error', reject);
  });

  const stop = () => {
    server.close(() => process.exit(0));
    server.closeAllConnections?.();
    setTimeout(() => process.exit(0), 2000).unref();
  };
  process.once('SIGTERM', stop);
  process.once('SIGINT', stop);
  return server;
}

async function main() {
  const port = Number(process.env.PORT || 3100);
  const host = process.env.HOST || '127.0.0.1';
  const workers = Math.max(1, Number(process.env.WORKERS || 1));

  if (cluster.isWorker) {
    await startServer(JSON.parse(process.env.PEER_SHARED), port, host);
    return;
  }

  const shared = makeShared(parseAlg());

  if (workers === 1) {
    await startServer(shared, port, host);
    process.stdout.write(`ready ${port}\n`);
    return;
  }

  let listening = 0;
  let stopping = false;
  let exitCode = 0;
  const env = { PEER_SHARED: JSON.stringify(shared), NODE_ENV: process.env.NODE_ENV };
  for (let i = 0; i < workers; i += 1) cluster.fork(env);

  cluster.on('listening', () => {
    listening += 1;
    if (listening === workers) process.stdout.write(`ready ${port}\n`);
  });
  cluster.on('exit', (worker, code, signal) => {
    if (!stopping) {
      console.error(`worker ${worker.process.pid} exited (code ${code}, signal ${signal}); stopping`);
      shutdown(1);
    } else if (!Object.keys(cluster.workers).length) {
      process.exit(exitCode);
    }
  });

  function shutdown(code = 0) {
    if (stopping) return;
    stopping = true;
    exitCode = code;
    for (const w of Object.values(cluster.workers)) w.process.kill('SIGTERM');
    setTimeout(() => process.exit(code), 3000).unref();
    if (!Object.keys(cluster.workers).length) process.exit(code);
  }
  process.once('SIGTERM', () => shutdown(0));
  process.once('SIGINT', () => shutdown(0));
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
