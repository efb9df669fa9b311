import { expect, test } from '@playwright/test';

import { chatItem, directChat, groupChat, messages, openChat, person, screenshot, send } from './helpers.ts';

// The pictures for the README: the main screens on a desktop and at phone width, light
// and dark. The names are fixed so the pictures read well; the data directory is fresh.

test('screenshots of the main screens', async ({ browser, baseURL }) => {
  const maria = await person(browser, baseURL, 'maria', { viewport: { width: 1280, height: 800 } });
  const jonas = await person(browser, baseURL, 'jonas');
  const priya = await person(browser, baseURL, 'priya');
  await directChat(maria, jonas);
  await groupChat(priya, 'Design review', [maria, jonas]);
  await directChat(priya, maria);

  await jonas.page.reload();
  await priya.page.reload();
  await openChat(priya.page, 'Design review');
  await send(priya.page, 'Mockups for the new onboarding are up: https://example.com/onboarding');
  await openChat(jonas.page, 'maria');
  await send(jonas.page, 'Hey Maria! Are we still on for Thursday?');
  await send(jonas.page, 'I booked the small room, 2 pm.\nBringing the printouts.');

  await maria.page.reload();
  await expect(chatItem(maria.page, 'jonas').getByLabel('2 unread')).toBeVisible();
  await expect(chatItem(maria.page, 'Design review').getByLabel('1 unread')).toBeVisible();
  await screenshot(maria.page, 'chat-list');
  await openChat(maria.page, 'jonas');
  await expect(messages(maria.page)).toHaveCount(2);
  await send(maria.page, 'Yes, Thursday works. See you there.');
  await expect(messages(jonas.page)).toHaveCount(3);
  await jonas.page.getByRole('textbox', { name: 'Message' }).pressSequentially('Perfect');
  await expect(maria.page.getByText('jonas is typing…')).toBeVisible();
  await screenshot(maria.page, 'conversation');

  await maria.page.emulateMedia({ colorScheme: 'dark' });
  await screenshot(maria.page, 'conversation-dark');
  await maria.page.emulateMedia({ colorScheme: 'light' });

  const phone = await browser.newContext({ baseURL, viewport: { width: 390, height: 844 }, isMobile: true, hasTouch: true });
  await phone.addCookies(await maria.context.cookies());
  const page = await phone.newPage();
  await page.goto('/');
  await expect(chatItem(page, 'Design review')).toBeVisible();
  await screenshot(page, 'phone-chat-list');
  await openChat(page, 'jonas');
  await expect(messages(page)).toHaveCount(3);
  await expect(page.getByRole('link', { name: 'Back to chats' })).toBeVisible();
  await screenshot(page, 'phone-conversation');
  await page.getByRole('link', { name: 'Back to chats' }).click();
  await expect(chatItem(page, 'jonas')).toBeVisible();

  for (const context of [maria.context, jonas.context, priya.context, phone]) await context.close();
});
