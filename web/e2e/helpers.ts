import { mkdirSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

import { expect, type Browser, type BrowserContext, type BrowserContextOptions, type Locator, type Page } from '@playwright/test';

export const CSRF = { 'X-Parlor-CSRF': '1' };
export const PASSWORD = 'correct horse battery';

const here = path.dirname(fileURLToPath(import.meta.url));
export const SCREENSHOTS_DIR = path.resolve(here, '../e2e-screenshots');

export interface Person {
  context: BrowserContext;
  page: Page;
  id: string;
  username: string;
}

let counter = 0;

/** A username no other test uses (the server's data directory lives for the whole run). */
export function uniqueName(prefix: string): string {
  counter += 1;
  return `${prefix}_${Date.now().toString(36)}${counter}`;
}

/**
 * A person with an account, logged in in a browser context of their own. The account is
 * made through the API by the context's request client, so the session cookie lands in
 * the context's cookie jar and the page opens logged in.
 */
export async function person(
  browser: Browser,
  baseURL: string | undefined,
  username: string,
  options: BrowserContextOptions = {},
): Promise<Person> {
  const context = await browser.newContext({ baseURL, ...options });
  let response = await context.request.post('/api/v1/auth/register', {
    data: { username, password: PASSWORD },
    headers: CSRF,
  });
  if (response.status() === 409) {
    // Already registered by an earlier attempt in this run: log in instead.
    response = await context.request.post('/api/v1/auth/login', {
      data: { username, password: PASSWORD },
      headers: CSRF,
    });
  }
  expect(response.ok(), `register ${username}: ${response.status()} ${await response.text()}`).toBe(true);
  const { user } = (await response.json()) as { user: { id: string; username: string } };
  const page = await context.newPage();
  await page.goto('/');
  await expect(page.getByRole('button', { name: 'Log out' })).toBeVisible();
  return { context, page, id: user.id, username: user.username };
}

/** The direct conversation between `a` and `b`, made through a's API session. */
export async function directChat(a: Person, b: Person): Promise<string> {
  const response = await a.context.request.post('/api/v1/conversations', {
    data: { kind: 'direct', members: [b.id] },
    headers: CSRF,
  });
  expect(response.ok(), `create direct: ${response.status()} ${await response.text()}`).toBe(true);
  return ((await response.json()) as { id: string }).id;
}

export async function groupChat(owner: Person, title: string, members: Person[]): Promise<string> {
  const response = await owner.context.request.post('/api/v1/conversations', {
    data: { kind: 'group', title, members: members.map((m) => m.id) },
    headers: CSRF,
  });
  expect(response.ok(), `create group: ${response.status()} ${await response.text()}`).toBe(true);
  return ((await response.json()) as { id: string }).id;
}

/**
 * Posts messages through the HTTP API (setup for history and catch-up tests), in order.
 * A `429 rate_limited` is waited out as its Retry-After says (1 s without one), a bounded
 * number of times: the server's flood limits are not what these tests are about.
 */
export async function postMessages(sender: Person, conversation: string, bodies: string[], idPrefix: string): Promise<void> {
  for (const [i, body] of bodies.entries()) {
    for (let attempt = 0; ; attempt++) {
      const response = await sender.context.request.post(`/api/v1/conversations/${conversation}/messages`, {
        data: { client_msg_id: `${idPrefix}-${i + 1}`, body },
        headers: CSRF,
      });
      if (response.status() === 429 && attempt < 30) {
        const seconds = Number(response.headers()['retry-after'] ?? '1');
        await new Promise((resolve) => setTimeout(resolve, Math.min(Math.max(seconds, 0.1), 5) * 1000));
        continue;
      }
      expect(response.status(), `post ${body}: ${await response.text()}`).toBe(202);
      break;
    }
  }
}

export function chatList(page: Page): Locator {
  return page.getByRole('list', { name: 'Chats' });
}

export function chatItem(page: Page, title: string): Locator {
  return chatList(page).getByRole('listitem', { name: title, exact: true });
}

export function messages(page: Page): Locator {
  return page.getByRole('list', { name: 'Messages' }).getByRole('listitem');
}

export async function openChat(page: Page, title: string): Promise<void> {
  await chatItem(page, title).getByRole('link').click();
  await expect(page.getByRole('heading', { name: title, exact: true })).toBeVisible();
}

/** Types and sends with Enter, then waits until the server gave it a seq ("Sent"). */
export async function send(page: Page, body: string): Promise<void> {
  const box = page.getByRole('textbox', { name: 'Message' });
  await box.fill(body);
  await box.press('Enter');
  await expect(messages(page).filter({ hasText: body }).last()).toContainText(/Sent|Delivered|Seen/);
}

export async function screenshot(page: Page, name: string): Promise<void> {
  mkdirSync(SCREENSHOTS_DIR, { recursive: true });
  // The pointer rests where the last click left it: move it off anything it would highlight.
  await page.mouse.move(0, 0);
  await page.screenshot({ path: path.join(SCREENSHOTS_DIR, `${name}.png`), animations: 'disabled', caret: 'hide' });
}

/** Asks for any change through the HTTP API (setup: a reply, a reaction, a rename…). */
export async function postEvent(sender: Person, conversation: string, change: Record<string, unknown>, clientMsgId: string): Promise<void> {
  const response = await sender.context.request.post(`/api/v1/conversations/${conversation}/events`, {
    data: { client_msg_id: clientMsgId, ...change },
    headers: CSRF,
  });
  expect(response.status(), `event ${JSON.stringify(change)}: ${await response.text()}`).toBe(202);
}

/** The one message whose text contains `text`. */
export function messageWith(page: Page, text: string): Locator {
  return messages(page).filter({ hasText: text });
}

/** Opens the actions menu of a message from the keyboard-reachable "More actions" button. */
export async function messageMenu(page: Page, text: string): Promise<Locator> {
  const item = messageWith(page, text);
  await item.hover();
  await item.getByRole('button', { name: 'More actions' }).click();
  const menu = page.getByRole('menu', { name: 'Message actions' });
  await expect(menu).toBeVisible();
  return menu;
}

export async function openChatInfo(page: Page): Promise<Locator> {
  await page.getByRole('button', { name: 'Chat info', exact: true }).click();
  const dialog = page.getByRole('dialog', { name: /Group info|Chat info/ });
  await expect(dialog).toBeVisible();
  return dialog;
}

/** The seq of the newest message with `body` (setup for reactions, edits and replies). */
export async function seqOf(viewer: Person, conversation: string, body: string): Promise<number> {
  const response = await viewer.context.request.get(`/api/v1/conversations/${conversation}/messages?limit=200`, { headers: CSRF });
  expect(response.ok()).toBe(true);
  const { messages: list } = (await response.json()) as { messages: Array<{ seq: number; body: string }> };
  const found = list.filter((m) => m.body === body).at(-1);
  expect(found, `no message "${body}"`).toBeDefined();
  return found!.seq;
}
