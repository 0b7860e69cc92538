// "Copy as curl": the POST /generate (or /train) a body makes, as a shell command, with the key as
// $FRESCO_API_KEY.

const quote = (text) => `'${text.replaceAll("'", `'\\''`)}'`;
// Past this the body goes in through stdin: one command-line argument has a length limit (an image's base64).
const INLINE_MAX = 4000;

/** The curl command for `body` to `route` at `origin`; `withKey`: send the key from $FRESCO_API_KEY. */
export function curlCommand(origin, body, withKey, route = "/generate") {
  const json = JSON.stringify(body);
  const lines = [`curl -s ${quote(`${origin}${route}`)}`, `-H 'Content-Type: application/json'`];
  if (withKey) lines.push(`-H "Authorization: Bearer $FRESCO_API_KEY"`);
  if (json.length <= INLINE_MAX) {
    lines.push(`-d ${quote(json)}`);
    return lines.join(" \\\n  ");
  }
  lines.push("--data-binary @- <<'JSON'");
  return `${lines.join(" \\\n  ")}\n${json}\nJSON`;
}

/** Put `text` on the clipboard; false where the browser will not (plain http to another host). */
export async function copyText(text) {
  try {
    await navigator.clipboard.writeText(text);
    return true;
  } catch {
    return false;
  }
}
