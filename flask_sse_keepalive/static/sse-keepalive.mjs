// ES module entry of sse-keepalive.js: `import { SSEKeepalive } from ".../sse-keepalive.mjs"`.
// The classic script assigns globalThis.SSEKeepalive when it runs as a module,
// so one implementation serves <script>, import and require().
import "./sse-keepalive.js";

export const SSEKeepalive = globalThis.SSEKeepalive;
export const EventStreamParser = SSEKeepalive.EventStreamParser;
export default SSEKeepalive;
