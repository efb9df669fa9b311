import { expect, test } from '@playwright/test';

import { directChat, messages, openChat, person, postMessages, uniqueName } from './helpers.ts';

test('history loads upward as the reader scrolls, keeping their place', async ({ browser, baseURL }) => {
  const ada = await person(browser, baseURL, uniqueName('ada'));
  const ben = await person(browser, baseURL, uniqueName('ben'));
  const id = await directChat(ada, ben);
  const total = 120;
  await postMessages(
    ada,
    id,
    Array.from({ length: total }, (_, i) => `history ${i + 1}`),
    'history',
  );

  await ben.page.reload();
  await openChat(ben.page, ada.username);
  const list = messages(ben.page);
  await expect(list.last()).toContainText(`history ${total}`);
  await expect(list.last()).toBeInViewport();
  const firstLoaded = await list.count();
  expect(firstLoaded).toBeLessThan(total);

  const scroller = ben.page.locator('.messages-scroll');
  while ((await list.count()) < total) {
    const count = await list.count();
    const topBody = /history \d+ /.exec((await list.first().textContent()) ?? '')?.[0];
    expect(topBody).toBeDefined();
    await scroller.evaluate((el) => {
      el.scrollTop = 0;
    });
    await expect(list).not.toHaveCount(count);
    // The message that was at the top is still on screen: nothing jumped.
    await expect(list.filter({ hasText: topBody! })).toBeInViewport();
  }
  await expect(ben.page.getByText(`The beginning of your conversation with ${ada.username}`)).toBeVisible();
  const texts = await list.allTextContents();
  expect(texts.map((t) => Number(/history (\d+) /.exec(t)?.[1]))).toEqual(Array.from({ length: total }, (_, i) => i + 1));

  await ada.context.close();
  await ben.context.close();
});
