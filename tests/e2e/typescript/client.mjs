// Drives `aop serve` with the official TypeScript MCP SDK and prints one JSON object: what it saw,
// down to each HTTP exchange's status and content type, and any error with the step it ended.
//
// Scenario (JSON, as the first argument or on stdin):
//   url, apiKey                 where to connect, and the bearer key
//   offerProtocolVersion        optional: the version offered in `initialize` instead of the SDK's latest
//   agent                       optional: create_agent arguments; the agent is read back as a tool and as a resource
//   message                     optional: with agent, one session turn (start_session, send_message, get_messages)
//
// The SDK is loaded from the node_modules holding this Node (the test tools), or from AOP_NODE_MODULES.

import { readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { pathToFileURL } from 'node:url';

const nodeModules = process.env.AOP_NODE_MODULES ?? join(dirname(process.execPath), '..', '..');
const sdk = (path) => import(pathToFileURL(join(nodeModules, '@modelcontextprotocol/sdk/dist/esm', path)).href);
const { Client } = await sdk('client/index.js');
const { StreamableHTTPClientTransport } = await sdk('client/streamableHttp.js');

/** The SDK's transport, offering another protocol version in `initialize` when asked to. */
class OfferingTransport extends StreamableHTTPClientTransport {
  constructor(url, options, offeredVersion) {
    super(url, options);
    this.offeredVersion = offeredVersion;
  }

  send(message, options) {
    if (this.offeredVersion && message.method === 'initialize') {
      message = { ...message, params: { ...message.params, protocolVersion: this.offeredVersion } };
    }
    return super.send(message, options);
  }
}

function describe(error) {
  return { name: error.name, code: error.code ?? null, message: error.message };
}

/** A tool's structured result; a tool error becomes an exception carrying its text. */
async function call(client, name, args) {
  const result = await client.callTool({ name, arguments: args });
  if (result.isError) {
    throw Object.assign(new Error(result.content.map((c) => c.text).join('\n')), { name: 'ToolError' });
  }
  return result.structuredContent;
}

/** fetch, noting each HTTP exchange's method, status and content type in the report. */
function recordingFetch(report) {
  return async (url, init) => {
    const response = await fetch(url, init);
    const contentType = response.headers.get('content-type');
    report.http.push({ method: init?.method ?? 'GET', status: response.status, contentType });
    return response;
  };
}

async function run(scenario, report) {
  const transport = new OfferingTransport(
    new URL(scenario.url),
    { requestInit: { headers: { Authorization: `Bearer ${scenario.apiKey}` } }, fetch: recordingFetch(report) },
    scenario.offerProtocolVersion,
  );
  const client = new Client({ name: 'aop-e2e-typescript', version: '1.0.0' });
  client.onerror = (error) => report.transportErrors.push(describe(error));

  report.step = 'connect';
  await client.connect(transport);
  report.protocolVersion = transport.protocolVersion;
  report.server = client.getServerVersion();
  report.sessionId = transport.sessionId ?? null;

  try {
    report.step = 'tools/list';
    report.tools = (await client.listTools()).tools.map((tool) => tool.name);
    report.step = 'resources/templates/list';
    report.resourceTemplates = (await client.listResourceTemplates()).resourceTemplates.map((t) => t.uriTemplate);
    if (!scenario.agent) return;

    report.step = 'create_agent';
    report.created = await call(client, 'create_agent', scenario.agent);
    const agentId = report.created.agent.agent_id;
    report.step = 'get_agent';
    report.fetched = await call(client, 'get_agent', { agent_id: agentId });

    report.step = 'resources/read';
    const { contents } = await client.readResource({ uri: `agent://${agentId}` });
    report.resource = contents.map((c) => ({ uri: c.uri, mimeType: c.mimeType, json: JSON.parse(c.text) }));
    report.step = 'resources/read missing';
    try {
      await client.readResource({ uri: 'agent://agt_missing' });
      report.missingResource = null;
    } catch (error) {
      report.missingResource = describe(error);
    }

    if (scenario.message === undefined) return;
    report.step = 'start_session';
    report.session = await call(client, 'start_session', { agent_id: agentId, user_id: 'e2e-typescript' });
    report.step = 'send_message';
    const sessionId = report.session.session_id;
    report.turn = await call(client, 'send_message', { session_id: sessionId, content: scenario.message });
    report.step = 'get_messages';
    report.messages = await call(client, 'get_messages', { session_id: sessionId });
  } finally {
    await transport.terminateSession();
    await client.close();
  }
}

const scenario = JSON.parse(process.argv[2] ?? readFileSync(0, 'utf8'));
const report = { http: [], transportErrors: [], error: null };
try {
  await run(scenario, report);
} catch (error) {
  report.error = { step: report.step, ...describe(error) };
}
delete report.step;
process.stdout.write(JSON.stringify(report) + '\n');
