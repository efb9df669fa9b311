import { expect, test } from '@playwright/test';

import { chatItem, directChat, messages, openChat, person, send, uniqueName } from './helpers.ts';

test('a message that is an XSS payload renders as text and runs nothing', async ({ browser, baseURL }) => {
  const ada = await person(browser, baseURL, uniqueName('ada'));
  const ben = await person(browser, baseURL, uniqueName('ben'));
  await directChat(ada, ben);
  await ada.page.reload();
  await ben.page.reload();

  const dialogs: string[] = [];
  ben.page.on('dialog', (dialog) => {
    dialogs.push(dialog.message());
    void dialog.dismiss();
  });

  const payload =
    '<img src=x onerror="window.parlorPwned=1;alert(1)"><script>window.parlorPwned=2</script>' +
    '<a href="javascript:window.parlorPwned=3">click</a> **bold** &amp; javascript:alert(4)';
  await openChat(ada.page, ben.username);
  // Rendered, the payload does not read like its source (**bold** is bold): wait for it to be sent.
  const box = ada.page.getByRole('textbox', { name: 'Message' });
  await box.fill(payload);
  await box.press('Enter');
  await expect(messages(ada.page).first()).toContainText(/Sent|Delivered|Seen/);
  await send(ada.page, 'see https://example.com/docs?q=1. ok');

  await expect(chatItem(ben.page, ada.username)).toContainText('see https://example.com');
  await openChat(ben.page, ada.username);
  const list = ben.page.getByRole('list', { name: 'Messages' });
  // Markup is text; only the markdown subset means anything, and it builds elements.
  await expect(messages(ben.page).first()).toContainText(payload.replace('**bold**', 'bold'));
  await expect(list.locator('img, script, [onerror]')).toHaveCount(0);
  await expect(list.locator('a[href^="javascript:"]')).toHaveCount(0);
  await expect(messages(ben.page).first().locator('strong')).toHaveText('bold');

  // Plain http(s) links are the one thing made clickable.
  const link = messages(ben.page).nth(1).getByRole('link', { name: 'https://example.com/docs?q=1' });
  await expect(link).toHaveAttribute('href', 'https://example.com/docs?q=1');
  await expect(link).toHaveAttribute('rel', /noopener/);

  // The chat-list preview is text too.
  await expect(chatItem(ben.page, ada.username).locator('img, script')).toHaveCount(0);
  expect(await ben.page.evaluate(() => (window as unknown as { parlorPwned?: number }).parlorPwned)).toBeUndefined();
  expect(dialogs).toEqual([]);

  // Markdown cannot smuggle markup or script links either: not in code, quotes, emphasis,
  // link text or a reply's quote.
  const tricks = [
    '`<img src=x onerror=window.parlorPwned=5>`',
    '> <script>window.parlorPwned=6</script>',
    '**<svg onload=window.parlorPwned=7>**',
    '```\n<iframe src="javascript:window.parlorPwned=8"></iframe>\n```',
    '_[click](javascript:window.parlorPwned=9)_ data:text/html,<b>x</b>',
  ];
  for (const [i, body] of tricks.entries()) {
    // Rendered, these do not read like their source: wait for the count instead of the text.
    await box.fill(body);
    await box.press('Enter');
    await expect(messages(ben.page)).toHaveCount(3 + i);
  }
  await expect(list.locator('img, script, svg:not(.icon), iframe, [onerror], [onload]')).toHaveCount(0);
  await expect(list.locator('a:not([href^="https://"]):not([href^="http://"])')).toHaveCount(0);
  await expect(messages(ben.page).nth(2).locator('code')).toHaveText('<img src=x onerror=window.parlorPwned=5>');
  await expect(messages(ben.page).nth(5).locator('pre code')).toContainText('<iframe');
  expect(await ben.page.evaluate(() => (window as unknown as { parlorPwned?: number }).parlorPwned)).toBeUndefined();
  expect(dialogs).toEqual([]);

  await ada.context.close();
  await ben.context.close();
});
