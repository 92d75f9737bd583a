// Resolve DIDs and verify JWTs with independent, widely used DID libraries:
// did-resolver + web-did-resolver + key-did-resolver (DIF / Ceramic) and did-jwt.
// Reads {"resolve": [did, ...], "verify": [{"jwt", "audience"}, ...]} on stdin and
// writes {"resolved": {did: DIDResolutionResult}, "verified": [{ok, issuer, signer, payload, error}]}.
import { Resolver } from 'did-resolver'
import { getResolver as webResolver } from 'web-did-resolver'
import KeyResolver from 'key-did-resolver'
import { verifyJWT } from 'did-jwt'

const chunks = []
for await (const chunk of process.stdin) chunks.push(chunk)
const request = JSON.parse(Buffer.concat(chunks).toString('utf8'))
const resolver = new Resolver({ ...webResolver(), ...KeyResolver.getResolver() }, { cache: false })

const resolved = {}
for (const did of request.resolve ?? []) {
  resolved[did] = await resolver.resolve(did)
}
const verified = []
for (const { jwt, audience } of request.verify ?? []) {
  try {
    const result = await verifyJWT(jwt, { resolver, audience, proofPurpose: 'assertionMethod' })
    verified.push({ ok: true, issuer: result.issuer, signer: result.signer.id, payload: result.payload })
  } catch (error) {
    verified.push({ ok: false, error: String(error?.message ?? error) })
  }
}
process.stdout.write(JSON.stringify({ resolved, verified }))
