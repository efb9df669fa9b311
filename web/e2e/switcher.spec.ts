import { expect, test, type Page } from '@playwright/test';

import { chatItem, chatList, directChat, groupChat, openChat, person, postMessages, screenshot, uniqueName } from './helpers.ts';

function switcher(page: Page) {
  return page.getByRole('dialog', { name: 'Jump to' });
}

function switcherField(page: Page) {
  return switcher(page).getByRole('combobox', { name: 'Jump to a chat or person' });
}

test('the quick switcher jumps to a chat or a person from the keyboard alone', async ({ browser, baseURL }) => {
  const ada = await person(browser, baseURL, uniqueName('ada'));
  const ben = await person(browser, baseURL, uniqueName('ben'));
  const cara = await person(browser, baseURL, uniqueName('cara'));
  const dan = await person(browser, baseURL, uniqueName('dan'));
  const dm = await directChat(ben, ada);
  await groupChat(cara, 'Trip planning', [ada, ben]);
  await postMessages(ben, dm, ['are you coming on saturday?'], 'switch');
  await ada.page.reload();
  await expect(chatItem(ada.page, ben.username).getByLabel('1 unread')).toBeVisible();

  const page = ada.page;
  // Ctrl+K from anywhere: the recent chats, most recent first, unread shown.
  await page.keyboard.press('Control+K');
  await expect(switcher(page)).toBeVisible();
  await expect(switcherField(page)).toBeFocused();
  const options = switcher(page).getByRole('option');
  await expect(options.first()).toContainText(ben.username);
  await expect(options.first()).toHaveAttribute('aria-selected', 'true');
  await expect(options.first().getByLabel('1 unread')).toBeVisible();
  await screenshot(page, 'switcher');
  await page.emulateMedia({ colorScheme: 'dark' });
  await screenshot(page, 'switcher-dark');
  await page.emulateMedia({ colorScheme: 'light' });

  // A group by a word of its title; Enter opens the best match.
  await page.keyboard.type('trip');
  await expect(options).toHaveCount(1);
  await page.keyboard.press('Enter');
  await expect(switcher(page)).toBeHidden();
  await expect(page.getByRole('heading', { name: 'Trip planning', exact: true })).toBeVisible();

  // A group by a member's name, reached with the arrows; Cmd+K works as well.
  await page.keyboard.press('Meta+K');
  await page.keyboard.type(cara.username);
  await expect(options.first()).toContainText('Trip planning');
  await expect(options.filter({ hasText: 'Start a direct chat' })).toContainText(cara.username);
  await page.keyboard.press('ArrowDown');
  await expect(options.nth(1)).toHaveAttribute('aria-selected', 'true');
  await page.keyboard.press('ArrowUp');
  await page.keyboard.press('Enter');
  await expect(page.getByRole('heading', { name: 'Trip planning', exact: true })).toBeVisible();

  // A person without a chat yet: choosing them opens the direct chat, as New chat does.
  await page.keyboard.press('Control+K');
  await page.keyboard.type(dan.username);
  await expect(options).toHaveCount(1);
  await expect(options.first()).toContainText('Start a direct chat');
  await page.keyboard.press('Enter');
  await expect(page.getByRole('heading', { name: dan.username, exact: true })).toBeVisible();
  await expect(chatItem(page, dan.username)).toBeVisible();

  // Nothing matches: said so. Escape closes and gives the focus back.
  const composer = page.getByRole('textbox', { name: 'Message' });
  await composer.focus();
  await page.keyboard.press('Control+K');
  await page.keyboard.type('zzzz nobody');
  await expect(switcher(page).getByText('No chat or person matches “zzzz nobody”.')).toBeVisible();
  await page.keyboard.press('Escape');
  await expect(switcher(page)).toBeHidden();
  await expect(composer).toBeFocused();

  // For mouse and touch: a visible button.
  await page.getByRole('button', { name: 'Jump to a chat or person' }).click();
  await expect(switcherField(page)).toBeFocused();
  await switcher(page).getByRole('option', { name: new RegExp(ben.username) }).click();
  await expect(page.getByRole('heading', { name: ben.username, exact: true })).toBeVisible();

  for (const p of [ada, ben, cara, dan]) await p.context.close();
});

test('the chat list filter narrows the list by title and member names', async ({ browser, baseURL }) => {
  const ada = await person(browser, baseURL, uniqueName('ada'));
  const ben = await person(browser, baseURL, uniqueName('ben'));
  const zoe = await person(browser, baseURL, uniqueName('zoe'));
  await directChat(ada, ben);
  await groupChat(ada, 'Book club', [zoe]);
  await groupChat(ada, 'Climbing', [ben, zoe]);
  await ada.page.reload();
  const page = ada.page;
  await expect(chatList(page).getByRole('listitem')).toHaveCount(3);

  const filter = page.getByRole('textbox', { name: 'Filter chats' });
  await filter.fill('book');
  await expect(chatList(page).getByRole('listitem')).toHaveCount(1);
  await expect(chatItem(page, 'Book club')).toBeVisible();

  // By a member's name: the direct chat with ben and the group he is in.
  await filter.fill(ben.username.toUpperCase());
  await expect(chatList(page).getByRole('listitem')).toHaveCount(2);
  await expect(chatItem(page, ben.username)).toBeVisible();
  await expect(chatItem(page, 'Climbing')).toBeVisible();
  await openChat(page, 'Climbing');

  await filter.fill('nothing like this');
  await expect(page.getByText('No chats match “nothing like this”.')).toBeVisible();
  await screenshot(page, 'chat-filter-empty');
  await page.getByRole('button', { name: 'Clear filter' }).click();
  await expect(filter).toHaveValue('');
  await expect(filter).toBeFocused();
  await expect(chatList(page).getByRole('listitem')).toHaveCount(3);

  await filter.fill('club');
  await expect(chatList(page).getByRole('listitem')).toHaveCount(1);
  await filter.press('Escape');
  await expect(filter).toHaveValue('');
  await expect(chatList(page).getByRole('listitem')).toHaveCount(3);

  for (const p of [ada, ben, zoe]) await p.context.close();
});
