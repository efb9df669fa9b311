import { readFile } from 'node:fs/promises';

import { expect, test, type JSHandle, type Locator, type Page } from '@playwright/test';

import { chatItem, directChat, messages, messageWith, openChat, person, screenshot, uniqueName, type Person } from './helpers.ts';
import { png } from './images.ts';

// Sharing files as a person does: the attach button, a paste, a drop; the other person sees
// images inline, opens them full size and downloads the rest. Also what goes wrong: a file
// too large, an upload cancelled halfway, the network gone during an upload and a send.

interface Upload {
  name: string;
  mimeType: string;
  buffer: Buffer;
}

const SUNSET: Upload = { name: 'sunset.png', mimeType: 'image/png', buffer: png(640, 400, [250, 140, 60], [120, 40, 140]) };
const FOREST: Upload = { name: 'forest.png', mimeType: 'image/png', buffer: png(400, 600, [30, 110, 60], [200, 230, 120]) };
const NOTES: Upload = { name: 'notes.txt', mimeType: 'text/plain', buffer: Buffer.from('Packing list\n- tent\n- stove\n- maps\n') };

function tray(page: Page): Locator {
  return page.getByRole('list', { name: 'Files to send' });
}

function chip(page: Page, name: string): Locator {
  return tray(page).getByRole('listitem', { name, exact: true });
}

function box(page: Page): Locator {
  return page.getByRole('textbox', { name: 'Message' });
}

/** Clicks "Attach files" and picks the files in the chooser it opens. */
async function attach(page: Page, files: Upload[]): Promise<void> {
  const chooser = page.waitForEvent('filechooser');
  await page.getByRole('button', { name: 'Attach files' }).click();
  await (await chooser).setFiles(files);
}

async function uploaded(page: Page, names: string[]): Promise<void> {
  for (const name of names) await expect(chip(page, name)).toContainText('uploaded');
}

/** A DataTransfer in the page holding one file made of bytes the test holds. */
function transfer(page: Page, file: Upload): Promise<JSHandle<DataTransfer>> {
  return page.evaluateHandle(
    (f) => {
      const bytes = Uint8Array.from(atob(f.base64), (c) => c.charCodeAt(0));
      const data = new DataTransfer();
      data.items.add(new File([bytes], f.name, { type: f.type }));
      return data;
    },
    { name: file.name, type: file.mimeType, base64: file.buffer.toString('base64') },
  );
}

async function paste(page: Page, file: Upload): Promise<void> {
  const data = await transfer(page, file);
  await box(page).evaluate((el, clipboardData) => {
    el.dispatchEvent(new ClipboardEvent('paste', { clipboardData, bubbles: true, cancelable: true }));
  }, data);
}

/** Drags a file over the conversation (the drop overlay shows), then lets go of it. */
async function drop(page: Page, file: Upload, whileOver?: () => Promise<void>): Promise<void> {
  const data = await transfer(page, file);
  const conversation = page.locator('section.conversation');
  await conversation.evaluate((el, dataTransfer) => {
    el.dispatchEvent(new DragEvent('dragenter', { dataTransfer, bubbles: true, cancelable: true }));
    el.dispatchEvent(new DragEvent('dragover', { dataTransfer, bubbles: true, cancelable: true }));
  }, data);
  await expect(page.getByText(/Drop files to share them in/)).toBeVisible();
  await whileOver?.();
  await conversation.evaluate((el, dataTransfer) => {
    el.dispatchEvent(new DragEvent('drop', { dataTransfer, bubbles: true, cancelable: true }));
  }, data);
  await expect(page.getByText(/Drop files to share them in/)).toBeHidden();
}

async function pair(browser: Parameters<typeof person>[0], baseURL: string | undefined): Promise<[Person, Person]> {
  const ada = await person(browser, baseURL, uniqueName('ada'), { viewport: { width: 1280, height: 800 } });
  const ben = await person(browser, baseURL, uniqueName('ben'), { viewport: { width: 1280, height: 800 } });
  await directChat(ada, ben);
  await ada.page.reload();
  await ben.page.reload();
  await openChat(ada.page, ben.username);
  await openChat(ben.page, ada.username);
  return [ada, ben];
}

/** The image has loaded (its pixels arrived), not only its box. */
async function loaded(image: Locator): Promise<void> {
  await expect(image).toBeVisible();
  await expect.poll(() => image.evaluate((el) => (el as HTMLImageElement).complete && (el as HTMLImageElement).naturalWidth)).toBeGreaterThan(0);
}

test('files attached with the button arrive as images inline and a card to download', async ({ browser, baseURL }) => {
  const [ada, ben] = await pair(browser, baseURL);

  await attach(ada.page, [SUNSET, FOREST, NOTES]);
  await uploaded(ada.page, ['sunset.png', 'forest.png', 'notes.txt']);
  await loaded(chip(ada.page, 'sunset.png').locator('img')); // the local preview
  await expect(chip(ada.page, 'notes.txt')).toContainText('35 bytes');
  await box(ada.page).fill('Pictures from the trip, and the list');
  await box(ada.page).press('Enter');
  await expect(tray(ada.page)).toBeHidden();
  await expect(messageWith(ada.page, 'Pictures from the trip')).toContainText(/Sent|Delivered|Seen/);

  const message = messageWith(ben.page, 'Pictures from the trip');
  await loaded(message.getByRole('img', { name: 'sunset.png' }));
  await loaded(message.getByRole('img', { name: 'forest.png' }));
  await expect(message.getByRole('link', { name: 'Download notes.txt, TXT, 35 bytes' })).toBeVisible();
  await screenshot(ben.page, 'files-conversation');
  await loaded(messageWith(ada.page, 'Pictures from the trip').getByRole('img', { name: 'forest.png' }));
  await ada.page.emulateMedia({ colorScheme: 'dark' });
  await screenshot(ada.page, 'files-conversation-mine-dark');
  await ada.page.emulateMedia({ colorScheme: 'light' });

  // The full-size viewer: the original, the arrows, Download, Escape.
  await message.getByRole('link', { name: 'sunset.png' }).click();
  const viewer = ben.page.getByRole('dialog', { name: 'sunset.png' });
  await expect(viewer).toBeVisible();
  const original = viewer.getByRole('img', { name: 'sunset.png' });
  await loaded(original);
  expect(await original.evaluate((el) => (el as HTMLImageElement).naturalWidth)).toBe(640);
  await expect(viewer).toContainText('1 of 2');
  await screenshot(ben.page, 'files-viewer');
  await ben.page.keyboard.press('ArrowRight');
  const next = ben.page.getByRole('dialog', { name: 'forest.png' });
  await expect(next).toBeVisible();
  const download = next.getByRole('link', { name: 'Download' });
  await expect(download).toHaveAttribute('href', /\/api\/v1\/files\/[^/]+\?download=1$/);
  await ben.page.keyboard.press('Escape');
  await expect(next).toBeHidden();

  // The text file downloads as an attachment with the bytes that were sent.
  const card = message.getByRole('link', { name: /Download notes\.txt/ });
  const [saved] = await Promise.all([ben.page.waitForEvent('download'), card.click()]);
  expect(saved.suggestedFilename()).toBe('notes.txt');
  expect(await readFile((await saved.path())!)).toEqual(NOTES.buffer);
  const href = (await card.getAttribute('href'))!;
  const response = await ben.context.request.get(href);
  expect(response.status()).toBe(200);
  expect(response.headers()['content-disposition']).toMatch(/^attachment/);
  expect(response.headers()['x-content-type-options']).toBe('nosniff');
  expect(await response.body()).toEqual(NOTES.buffer);

  // Someone outside the conversation gets nothing.
  const eve = await person(browser, baseURL, uniqueName('eve'));
  expect((await eve.context.request.get(href)).status()).toBe(404);

  for (const p of [ada, ben, eve]) await p.context.close();
});

test('a pasted image and a dropped file are sent, and the chat list says what came', async ({ browser, baseURL }) => {
  const [ada, ben] = await pair(browser, baseURL);

  await paste(ada.page, SUNSET);
  await uploaded(ada.page, ['sunset.png']);
  await box(ada.page).press('Enter');
  await expect(messages(ada.page).last().getByRole('img', { name: 'sunset.png' })).toBeVisible();
  await expect(messages(ada.page).last()).toContainText(/Sent|Delivered|Seen/);
  await loaded(messages(ben.page).last().getByRole('img', { name: 'sunset.png' }));

  // Ben opens another chat: his list row of Ada says a photo came.
  const carl = await person(browser, baseURL, uniqueName('carl'));
  await directChat(ben, carl);
  await expect(chatItem(ben.page, carl.username)).toBeVisible();
  await openChat(ben.page, carl.username);
  await expect(chatItem(ben.page, ada.username)).toContainText('🖼️ Photo');

  await drop(ada.page, NOTES, () => screenshot(ada.page, 'files-drop-overlay'));
  await uploaded(ada.page, ['notes.txt']);
  await ada.page.getByRole('button', { name: 'Send' }).click();
  await expect(messages(ada.page).last().getByRole('link', { name: /Download notes\.txt/ })).toBeVisible();
  await expect(chatItem(ben.page, ada.username)).toContainText('📎 notes.txt');

  for (const p of [ada, ben, carl]) await p.context.close();
});

test('a file too large says the limit, and an upload can be cancelled halfway', async ({ browser, baseURL }) => {
  const [ada, ben] = await pair(browser, baseURL);

  await attach(ada.page, [{ name: 'huge.bin', mimeType: 'application/octet-stream', buffer: Buffer.alloc(26 * 1024 * 1024, 7) }]);
  await expect(chip(ada.page, 'huge.bin')).toContainText('Too large: 26 MB, over the 25 MB limit.');
  await box(ada.page).fill('with the huge file');
  await expect(ada.page.getByRole('button', { name: 'Send' })).toBeDisabled();
  await chip(ada.page, 'huge.bin').getByRole('button', { name: 'Remove huge.bin' }).click();
  await expect(tray(ada.page)).toBeHidden();
  await expect(ada.page.getByRole('button', { name: 'Send' })).toBeEnabled();
  await box(ada.page).fill('');

  // The local server runs with a smaller limit (playwright.config.ts): its refusal is shown too.
  if (process.env.PARLOR_E2E_SERVER_FILE_BYTES_MAX) {
    const over = Number(process.env.PARLOR_E2E_SERVER_FILE_BYTES_MAX) + 1024 * 1024;
    await attach(ada.page, [{ name: 'over.bin', mimeType: 'application/octet-stream', buffer: Buffer.alloc(over, 3) }]);
    await expect(chip(ada.page, 'over.bin')).toContainText(/Too large: .+, over the server’s .+ limit/);
    await screenshot(ada.page, 'files-too-large');
    await expect(chip(ada.page, 'over.bin').getByRole('button', { name: /Retry/ })).toHaveCount(0);
    await chip(ada.page, 'over.bin').getByRole('button', { name: 'Remove over.bin' }).click();
  }

  // A slow uplink (Chromium's throttling), so that the upload is still running when cancelled.
  const cdp = await ada.context.newCDPSession(ada.page);
  await cdp.send('Network.enable');
  await cdp.send('Network.emulateNetworkConditions', { offline: false, latency: 0, downloadThroughput: -1, uploadThroughput: 64 * 1024 });
  await attach(ada.page, [{ name: 'slow.bin', mimeType: 'application/octet-stream', buffer: Buffer.alloc(2 * 1024 * 1024, 5) }]);
  const progress = chip(ada.page, 'slow.bin').getByRole('progressbar', { name: 'Uploading slow.bin' });
  await expect(progress).toBeVisible();
  await expect(ada.page.getByRole('button', { name: 'Send' })).toBeDisabled();
  await expect.poll(async () => Number(await progress.getAttribute('value')), { timeout: 20_000 }).toBeGreaterThan(0);
  await screenshot(ada.page, 'files-uploading');
  await chip(ada.page, 'slow.bin').getByRole('button', { name: 'Cancel upload of slow.bin' }).click();
  await expect(tray(ada.page)).toBeHidden();
  await cdp.send('Network.emulateNetworkConditions', { offline: false, latency: 0, downloadThroughput: -1, uploadThroughput: -1 });

  // Nothing was sent.
  await expect(messages(ben.page)).toHaveCount(0);
  for (const p of [ada, ben]) await p.context.close();
});

test('offline, an upload fails clearly and starts over when asked or when back online; the message waits', async ({ browser, baseURL }) => {
  const [ada, ben] = await pair(browser, baseURL);

  // The connection drops once under the first upload: Retry uploads it again.
  let cut = false;
  await ada.page.route('**/api/v1/files?*', async (route) => {
    if (!cut && route.request().method() === 'POST') {
      cut = true;
      await route.abort('connectionfailed');
    } else {
      await route.fallback();
    }
  });
  await attach(ada.page, [NOTES]);
  await expect(chip(ada.page, 'notes.txt')).toContainText('Upload failed — Retry');
  await chip(ada.page, 'notes.txt').getByRole('button', { name: 'Retry uploading notes.txt' }).click();
  await uploaded(ada.page, ['notes.txt']);
  await ada.page.unroute('**/api/v1/files?*');

  // Offline: a new file fails at once and says so, then uploads by itself once online again.
  await ada.context.setOffline(true);
  await expect(ada.page.getByRole('status').filter({ hasText: 'Offline' })).toBeVisible();
  await attach(ada.page, [SUNSET]);
  await expect(chip(ada.page, 'sunset.png')).toContainText('Upload failed — Retry (starts over once online)');
  await expect(ada.page.getByRole('button', { name: 'Send' })).toBeDisabled();
  await screenshot(ada.page, 'files-upload-failed');
  await ada.context.setOffline(false);
  await uploaded(ada.page, ['sunset.png', 'notes.txt']);

  // Sent offline, the message is pending with its files and goes out on reconnect, once.
  await ada.context.setOffline(true);
  await box(ada.page).fill('sent while offline');
  await box(ada.page).press('Enter');
  const pending = messageWith(ada.page, 'sent while offline');
  await expect(pending).toContainText('Sending');
  await expect(pending.getByRole('img', { name: 'sunset.png' })).toBeVisible();
  await ada.context.setOffline(false);
  await expect(pending).toContainText(/Sent|Delivered|Seen/);
  const arrived = messageWith(ben.page, 'sent while offline');
  await expect(arrived).toHaveCount(1);
  await loaded(arrived.getByRole('img', { name: 'sunset.png' }));
  await expect(arrived.getByRole('link', { name: /Download notes\.txt/ })).toBeVisible();

  for (const p of [ada, ben]) await p.context.close();
});

test('files at phone width and in the dark', async ({ browser, baseURL }) => {
  const ada = await person(browser, baseURL, uniqueName('ada'));
  const phone = await person(browser, baseURL, uniqueName('ben'), { viewport: { width: 390, height: 844 }, isMobile: true, hasTouch: true });
  await directChat(ada, phone);
  await ada.page.reload();
  await openChat(ada.page, phone.username);
  await attach(ada.page, [SUNSET, FOREST]);
  await uploaded(ada.page, ['sunset.png', 'forest.png']);
  await box(ada.page).fill('Two views from the top');
  await box(ada.page).press('Enter');
  await attach(ada.page, [FOREST]);
  await uploaded(ada.page, ['forest.png']);
  await box(ada.page).press('Enter');
  await attach(ada.page, [{ name: 'itinerary-final-version-2026.pdf', mimeType: 'application/pdf', buffer: Buffer.from('%PDF-1.4\n%\u00e2\u00e3\n1 0 obj <<>> endobj\ntrailer <<>>\n%%EOF\n') }]);
  await uploaded(ada.page, ['itinerary-final-version-2026.pdf']);
  await box(ada.page).press('Enter');
  await expect(messages(ada.page)).toHaveCount(3);

  const page = phone.page;
  await page.reload();
  await openChat(page, ada.username);
  await expect(messages(page)).toHaveCount(3);
  for (const image of await page.getByRole('list', { name: 'Messages' }).getByRole('img').all()) await loaded(image);
  await screenshot(page, 'phone-files');
  await page.emulateMedia({ colorScheme: 'dark' });
  await screenshot(page, 'phone-files-dark');

  // Choosing files on the phone: the chips above the box.
  await attach(page, [SUNSET, NOTES]);
  await uploaded(page, ['sunset.png', 'notes.txt']);
  await loaded(chip(page, 'sunset.png').locator('img'));
  await screenshot(page, 'phone-composer-files-dark');
  await chip(page, 'sunset.png').getByRole('button', { name: 'Remove sunset.png' }).click();
  await chip(page, 'notes.txt').getByRole('button', { name: 'Remove notes.txt' }).click();

  await messageWith(page, 'Two views from the top').getByRole('link', { name: 'forest.png' }).click();
  const viewer = page.getByRole('dialog', { name: 'forest.png' });
  await loaded(viewer.getByRole('img', { name: 'forest.png' }));
  await screenshot(page, 'phone-viewer-dark');
  await page.getByRole('button', { name: 'Close' }).click();
  await expect(viewer).toBeHidden();
  await page.emulateMedia({ colorScheme: 'light' });

  for (const p of [ada, phone]) await p.context.close();
});
