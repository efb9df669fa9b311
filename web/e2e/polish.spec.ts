import { expect, test } from '@playwright/test';

import { chatItem, directChat, messages, messageWith, openChat, person, send, uniqueName } from './helpers.ts';

test('Enter in the new-chat search opens the chat with the first match', async ({ browser, baseURL }) => {
  const ada = await person(browser, baseURL, uniqueName('ada'));
  const ben = await person(browser, baseURL, uniqueName('ben'));
  await ada.page.getByRole('button', { name: 'New chat' }).click();
  const search = ada.page.getByLabel('Search users');
  await expect(search).toBeFocused();
  // Enter right away: the chat opens once the search answers.
  await search.fill(ben.username);
  await search.press('Enter');
  await expect(ada.page.getByRole('heading', { name: ben.username, exact: true })).toBeVisible();
  await expect(ada.page.getByRole('textbox', { name: 'Message' })).toBeFocused();
  await ada.context.close();
  await ben.context.close();
});

test('"last seen" comes with the chat list after a reload, and a closed connection shows offline', async ({ browser, baseURL }) => {
  const ada = await person(browser, baseURL, uniqueName('ada'));
  const ben = await person(browser, baseURL, uniqueName('ben'));
  await directChat(ada, ben);
  await ada.page.reload();
  await openChat(ada.page, ben.username);
  await expect(ada.page.getByRole('main').getByText('online', { exact: true })).toBeVisible();
  await ben.context.close();
  await expect(ada.page.getByRole('main').getByText(/last seen/)).toBeVisible({ timeout: 35_000 });
  await ada.page.reload();
  await expect(ada.page.getByRole('main').getByText(/last seen (just now|\d+ minutes? ago)/)).toBeVisible();
  await ada.context.close();
});

test('on a phone, a tap on a message shows its actions', async ({ browser, baseURL }) => {
  const ada = await person(browser, baseURL, uniqueName('ada'), { viewport: { width: 390, height: 844 }, isMobile: true, hasTouch: true });
  const ben = await person(browser, baseURL, uniqueName('ben'));
  await directChat(ada, ben);
  await ben.page.reload();
  await openChat(ben.page, ada.username);
  await send(ben.page, 'tap me');
  await ada.page.reload();
  await openChat(ada.page, ben.username);
  const message = messageWith(ada.page, 'tap me');
  const reply = message.getByRole('button', { name: 'Reply', exact: true });
  await expect(reply).toBeHidden();
  await message.locator('.bubble').tap();
  await expect(reply).toBeVisible();
  await reply.tap();
  await expect(ada.page.getByText(`Replying to ${ben.username}`)).toBeVisible();
  await ada.page.getByRole('textbox', { name: 'Message' }).fill('tapped');
  await ada.page.getByRole('button', { name: 'Send' }).tap();
  await expect(messages(ada.page).last()).toContainText('tapped');
  await expect(chatItem(ben.page, ada.username)).toBeAttached();
  await ada.context.close();
  await ben.context.close();
});
