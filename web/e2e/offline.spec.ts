import { expect, test } from '@playwright/test';

import { directChat, messages, openChat, person, postMessages, send, uniqueName } from './helpers.ts';

test('after losing the network, every message shows once and in order', async ({ browser, baseURL }) => {
  const ada = await person(browser, baseURL, uniqueName('ada'));
  const ben = await person(browser, baseURL, uniqueName('ben'));
  await directChat(ada, ben);
  await ada.page.reload();
  await ben.page.reload();
  await openChat(ada.page, ben.username);
  await openChat(ben.page, ada.username);
  await send(ada.page, 'before the outage');
  await expect(messages(ben.page)).toHaveCount(1);

  await ben.context.setOffline(true);
  await expect(ben.page.getByRole('status').filter({ hasText: 'Offline' })).toBeVisible();
  const whileAway = ['while away 1', 'while away 2', 'while away 3', 'while away 4', 'while away 5'];
  for (const body of whileAway) await send(ada.page, body);

  // Ben writes too while offline: it waits as pending and goes out on reconnect.
  const box = ben.page.getByRole('textbox', { name: 'Message' });
  await box.fill('written offline');
  await box.press('Enter');
  await expect(messages(ben.page).filter({ hasText: 'written offline' })).toContainText('Sending');

  await ben.context.setOffline(false);
  const expected = ['before the outage', ...whileAway, 'written offline'];
  await expect(messages(ben.page)).toHaveCount(expected.length);
  await expect(messages(ben.page).filter({ hasText: 'written offline' })).toContainText(/Sent|Delivered|Seen/);
  const benSees = await messages(ben.page).allTextContents();
  expect(benSees.map((text) => expected.find((body) => text.includes(body)))).toEqual(expected);

  // Ada gets Ben's offline message exactly once.
  await expect(messages(ada.page)).toHaveCount(expected.length);
  await expect(messages(ada.page).filter({ hasText: 'written offline' })).toHaveCount(1);

  // A reload shows the same, from the store.
  await ben.page.reload();
  await expect(messages(ben.page)).toHaveCount(expected.length);
  const afterReload = await messages(ben.page).allTextContents();
  expect(afterReload.map((text) => expected.find((body) => text.includes(body)))).toEqual(expected);

  await ada.context.close();
  await ben.context.close();
});

test('after a longer absence, more than a screenful catches up completely and in order', async ({ browser, baseURL }) => {
  const ada = await person(browser, baseURL, uniqueName('ada'));
  const ben = await person(browser, baseURL, uniqueName('ben'));
  const id = await directChat(ada, ben);
  await ben.page.reload();
  await openChat(ben.page, ada.username);

  await ben.context.setOffline(true);
  await expect(ben.page.getByRole('status').filter({ hasText: 'Offline' })).toBeVisible();
  const count = 60;
  await postMessages(
    ada,
    id,
    Array.from({ length: count }, (_, i) => `bulk ${i + 1}`),
    'bulk',
  );
  await ben.context.setOffline(false);
  await expect(messages(ben.page).last()).toContainText(`bulk ${count}`);
  await expect(messages(ben.page)).toHaveCount(count);
  const texts = await messages(ben.page).allTextContents();
  expect(texts.map((t) => Number(/bulk (\d+) /.exec(t)?.[1]))).toEqual(Array.from({ length: count }, (_, i) => i + 1));

  await ada.context.close();
  await ben.context.close();
});
